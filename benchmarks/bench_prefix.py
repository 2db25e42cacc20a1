"""What the shared prefix saves: a t_s sweep run with and without forking at t_s, in the same run.

A sweep batch holds one pair and seed and L sites patched from the same t_s (the runner's cell order
puts t_s outside the sites), plus the hidden clean target row: L + 1 rows, 2 distinct before t_s. With
``share_prefix`` the steps before t_s run on those 2 rows once and are replayed to the others, so the
denoiser work of a batch is ``2 t_s + (L + 1)(n - t_s)`` row-steps instead of ``(L + 1) n``.

As in a sweep, the forked mode keeps one :class:`~diffprobe.engine.PrefixCache` and runs the batches latest
t_s first, so the 2 distinct rows' prefix is computed once (at the latest t_s) and reused by every earlier
batch: the denoiser work of the whole sweep is then ``2 max(t_s) + sum (L + 1)(n - t_s)``.

Measured on the embedded ``glyph`` model (the batches ``diffprobe sweep --intervention patch`` runs):

- the whole-run sweep: t_s = 0, 5, ..., 45 of 50 steps, one batch per t_s (the issue's target: ~0.55x,
  the work shared if the 2 distinct rows were free);
- the paper's editing setting: t_s = 4 of 50, where little is shared.

Each (batch, mode) is timed as the median of ``--repeats`` interleaved runs, and the images of the two
modes are compared (max difference in uint8 levels; the tolerance is stated in docs/benchmarks.md).
Run ``python benchmarks/bench_prefix.py``; ``--quick`` for a short check. Figures in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

SRC = 'a red sign that says "MILK"'
TGT = 'a red sign that says "CAT"'


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--t-starts", default="0,5,10,15,20,25,30,35,40,45")
    ap.add_argument("--edit-t-start", type=int, default=4, help="the editing setting's t_s")
    ap.add_argument("--sites", default="cross:4-11", help="L sites of one batch (default 8: the CPU batch unit)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="10 steps, t_s 0,5, one repeat")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.t_starts, args.edit_t_start, args.repeats = 10, "0,5", 2, 1

    import torch

    torch.set_num_threads(args.threads)
    import diffprobe as dp
    from diffprobe.engine import PrefixCache

    probe = dp.load("glyph", device="cpu", dtype="float32")
    sites = [s.label for s in probe.sites.parse(args.sites)]
    n = args.steps

    def batch(t_s: int) -> list:
        return [dp.Variant(SRC, (dp.Patch(source=TGT, sites=s, steps=f"{t_s}:"),), 0) for s in sites]

    def timed(t_s: int, share: bool, cache):
        t0 = time.perf_counter()
        _, result = probe.execute(batch(t_s), steps=n, share_prefix=share, prefix_cache=cache if share else None)
        return time.perf_counter() - t0, result

    def measure(t_starts: list[int]) -> dict:
        secs = {False: 0.0, True: 0.0}
        work = {False: 0, True: 0}
        worst = 0
        caches = [PrefixCache() for _ in range(args.repeats)]  # one per repeat: each repeat is a whole sweep
        for t_s in sorted(t_starts, reverse=True):  # the runner's order (diffprobe.runner.prefix_order)
            runs = {False: [], True: []}
            for r in range(args.repeats):
                for share in (False, True):  # interleaved: a burst of load slows both modes alike
                    runs[share].append(timed(t_s, share, caches[r]))
            for share in (False, True):
                secs[share] += statistics.median(s for s, _ in runs[share])
                work[share] += runs[share][0][1].row_steps
            diff = np.abs(runs[True][0][1].images.astype(int) - runs[False][0][1].images.astype(int)).max()
            worst = max(worst, int(diff))
            print(f"  t_s={t_s:>2}: full {statistics.median(s for s, _ in runs[False]):6.1f} s, "
                  f"forked {statistics.median(s for s, _ in runs[True]):6.1f} s, max |diff| {diff}", flush=True)
        return {"full_s": secs[False], "fork_s": secs[True], "time_ratio": secs[True] / secs[False],
                "work_ratio": work[True] / work[False], "max_diff": worst}

    print(f"glyph, {len(sites)} sites per batch ({args.sites}), {n} steps, {args.threads} thread(s), "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}")
    sweep = [int(t) for t in args.t_starts.split(",")]
    print(f"t_s sweep over the run: t_s = {args.t_starts}")
    a = measure(sweep)
    print(f"editing setting: t_s = {args.edit_t_start}")
    b = measure([args.edit_t_start])
    ideal = sum(n - t for t in sweep) / (len(sweep) * n)  # if the distinct rows cost nothing
    print()
    print(f"{'setting':<28}{'full s':>9}{'forked s':>10}{'time ratio':>12}{'work ratio':>12}{'max diff':>10}")
    for name, r in ((f"t_s sweep ({len(sweep)} values)", a), (f"editing, t_s={args.edit_t_start}", b)):
        print(f"{name:<28}{r['full_s']:>9.1f}{r['fork_s']:>10.1f}{r['time_ratio']:>12.2f}{r['work_ratio']:>12.2f}"
              f"{r['max_diff']:>10}")
    print(f"(bound if the 2 distinct rows were free: {ideal:.2f}; load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
