"""Attention maps: peak memory of a 50-step vs a 5-step map, and the time they add to an uncaptured run.

Each configuration runs in a fresh process (peak RSS is a per-process high-water mark), on the embedded glyph
model, one prompt, maps at every cross site averaged over all heads and steps. Also printed: the bytes of the
running sums the engine keeps, and what keeping every map (per step, site and head, as DAAM-style tools do) would
hold instead.

    .venv/bin/python benchmarks/bench_attention.py            # all configurations, a markdown table
    .venv/bin/python benchmarks/bench_attention.py --repeat 2 # best of 2 runs per configuration
    .venv/bin/python benchmarks/bench_attention.py --overhead 5 --steps 10   # interleaved none/map, medians
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

PROMPT = 'a red sign that says "STOP"'
CONFIGS = [("none", 5), ("map", 5), ("none", 50), ("map", 50), ("per_step", 50)]


def one(kind: str, steps: int, repeat: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import diffprobe
    from diffprobe.attention import run
    from diffprobe.interventions import AttentionMap

    probe = diffprobe.load("glyph")
    ivs = () if kind == "none" else (AttentionMap(sites="cross:all", per_step=kind == "per_step"),)
    variants = [diffprobe.Variant(PROMPT, ivs, 0)]
    run(probe, variants, steps=1)  # warm up (first-call allocations) before the peak is read
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        _, maps, _ = run(probe, variants, steps=steps)
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sites = list(probe.sites.of_kind("cross"))
    n_tokens = 77
    pixels = 32 * 96
    every = sum(s.heads * n_tokens * pixels // 4 ** _level(s.name) for s in sites) * 4 * steps
    held = int(sum(m.nbytes for m in maps.values()))
    return dict(kind=kind, steps=steps, seconds=min(times), peak_rss_mb=peak / 1024, rss_growth_mb=(peak - base) / 1024,
                result_bytes=held, keep_every_map_bytes=every if kind != "none" else 0)


def overhead(repeats: int, steps: int) -> dict:
    """Uncaptured vs mapped (all cross sites) vs mapped (cross:9), interleaved in one process: medians."""
    import statistics

    import torch

    torch.set_num_threads(1)
    import diffprobe
    from diffprobe.attention import run
    from diffprobe.interventions import AttentionMap

    probe = diffprobe.load("glyph")
    kinds = {"none": (), "map cross:all": (AttentionMap(sites="cross:all"),),
             "map cross:9": (AttentionMap(sites="cross:9"),)}
    times: dict = {k: [] for k in kinds}
    run(probe, [diffprobe.Variant(PROMPT)], steps=1)
    for _ in range(repeats):
        for k, ivs in kinds.items():
            t0 = time.perf_counter()
            run(probe, [diffprobe.Variant(PROMPT, ivs, 0)], steps=steps)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _level(name: str) -> int:
    """Downsampling level of a glyph UNet cross site (2x per level), from its block name."""
    parts = name.split(".")
    block, i = parts[0], int(parts[1]) if parts[1].isdigit() else 0
    if block == "down_blocks":
        return i
    if block == "mid_block":
        return 4
    return 4 - i


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--one", nargs=2, metavar=("KIND", "STEPS"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--overhead", type=int, metavar="REPEATS")
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    if args.overhead:
        med = overhead(args.overhead, args.steps)
        for k, v in med.items():
            print(f"| {k} | {args.steps} | {v:.2f} | {v / med['none']:.3f} |")
        print(f"\nload average {os.getloadavg()[0]:.1f}, 1 torch thread, median of {args.overhead} interleaved runs")
        return
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.repeat)))
        return
    rows = []
    for kind, steps in CONFIGS:
        out = subprocess.run([sys.executable, __file__, "--one", kind, str(steps), "--repeat", str(args.repeat)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(rows[-1], file=sys.stderr)
    print("| run | steps | wall s | peak RSS MB | RSS growth in the run MB | maps returned | every map kept |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['steps']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_mb']:.1f} | "
              f"{r['result_bytes'] / 1024:.0f} KiB | {r['keep_every_map_bytes'] / 2 ** 20:.1f} MiB |")
    print(f"\nload average {os.getloadavg()[0]:.1f}, 1 torch thread")


if __name__ == "__main__":
    main()
