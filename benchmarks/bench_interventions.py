"""What tracing, editing and batching cost: the interventions engine against the plain pipeline call.

One run, one model, one set of settings; every figure is the median over a few repeats, and the
repeats are interleaved (plain, traced, inject, patch, ... then again) so that a busy machine slows
every measure alike instead of whichever ran during a burst of load. Measures:

- plain pipeline call vs traced unpatched run (same prompt, seed, steps, batch): the price of nnsight;
- Inject edit vs plain: K/V computed from another prompt's embeddings, no extra denoiser row;
- Patch edit vs plain: the source prompt runs as an extra row of the same batch (about 2x the rows);
- an L-site single-site sweep, batched into one ``probe.run`` with L variants, vs L separate runs:
  the sweep shares one source row, one text encoding pass and one trace, instead of L of each.

Run ``python benchmarks/bench_interventions.py`` (or ``make bench``); ``--quick`` for a short check.
The figures written in docs/benchmarks.md come from this script.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SRC = 'A sign that says "STOP".'
TGT = 'A sign that says "GO".'

#: (name, measured ratio key, target, direction): "<=" the ratio must not exceed it, ">=" must reach it.
TARGETS = (
    ("traced unpatched / plain", "traced", 1.10, "<="),
    ("Inject edit / plain", "inject", 1.15, "<="),
    ("Patch edit / plain", "patch", 2.20, "<="),
    ("L separate runs / one batched sweep", "sweep", 4.00, ">="),
)


def _quiet() -> None:
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"(?s).*steps_offset", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r".*requires torchvision")


def sd_small():
    """An SD1.5-shaped pipeline with a small but not trivial UNet (17.6M parameters, 32x32 latents).

    The text encoder, tokenizer and VAE are the tiny ones of ``diffprobe.zoo.tiny``; only the UNet
    is larger, so the denoising loop dominates the time as it does in a real model.
    """
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from diffprobe.zoo.tiny import build_tiny

    base = build_tiny("sd15")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=[64, 128, 256], norm_num_groups=32, cross_attention_dim=32, attention_head_dim=8,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    )
    return StableDiffusionPipeline(**{**base.components, "unet": unet, "requires_safety_checker": False})


def build(model: str):
    from diffprobe.zoo.tiny import build_tiny

    if model == "sd-small":
        return sd_small()
    return build_tiny(model.removeprefix("tiny-"))


def machine() -> dict[str, str]:
    """The machine, and the package versions as every results dataset records them (diffprobe.results.versions)."""
    from diffprobe.results import versions

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return {
        "cpu": cpu,
        "logical cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "load average (1, 5, 15 min)": load,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions(),
    }


def measure(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds per function; one warm-up call each, then interleaved repeats."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sd-small", choices=["sd-small", "tiny-sdxl", "tiny-sd15"],
                        help="sd-small: SD1.5-shaped, 17.6M-parameter UNet (default); tiny-*: the test pipelines")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps N")
    parser.add_argument("--t-start", type=int, default=2, help="edits apply from this loop index on (t_s)")
    parser.add_argument("--sites", type=int, default=8, help="L, the number of single-site variants in the sweep")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a shared CPU)")
    parser.add_argument("--quick", action="store_true", help="a short check: 4 steps, 2 repeats, L=4")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.sites, args.t_start = 4, 2, 4, 1
    torch.set_num_threads(args.threads)
    _quiet()

    import diffprobe
    from diffprobe import Inject, Patch, Variant

    with tempfile.TemporaryDirectory() as tmp:
        build(args.model).save_pretrained(tmp)  # the real loading path
        probe = diffprobe.load(tmp)
        pipe = probe.pipeline
        n, ts = args.steps, f"{args.t_start}:"
        cross = probe.sites.of_kind("cross")
        up = probe.sites.select(kind="cross", block="up")
        edit_sites = list(up[len(up) // 2 - 1: len(up) // 2 + 2])  # three sites, as the paper's SDXL edit
        sweep_sites = list(cross[: min(args.sites, len(cross))])
        call_kwargs = probe.adapter.call_kwargs(pipe)

        def plain():
            out = pipe(SRC, generator=[torch.Generator().manual_seed(0)], num_inference_steps=n,
                       output_type="np", **call_kwargs)
            return np.clip(np.round(np.asarray(out.images) * 255), 0, 255).astype(np.uint8)

        sweep = [Variant(SRC, (Patch(source=TGT, sites=[s], steps=ts),)) for s in sweep_sites]
        fns = {
            "plain": plain,
            "traced": lambda: probe.generate(SRC, steps=n, seed=0),
            "inject": lambda: probe.generate(SRC, [Inject(prompt=TGT, sites=edit_sites, steps=ts)], steps=n, seed=0),
            "patch": lambda: probe.generate(SRC, [Patch(source=TGT, sites=edit_sites, steps=ts)], steps=n, seed=0),
            "sweep batched": lambda: probe.run(sweep, steps=n),
            "sweep separate": lambda: [probe.run([v], steps=n) for v in sweep],
        }
        exact = np.array_equal(plain(), probe.generate(SRC, steps=n, seed=0).images)
        med = measure(fns, args.repeats)

    ratios = {
        "traced": med["traced"] / med["plain"],
        "inject": med["inject"] / med["plain"],
        "patch": med["patch"] / med["plain"],
        "sweep": med["sweep separate"] / med["sweep batched"],
    }
    n_params = sum(p.numel() for p in probe.denoiser.parameters())
    print(f"# diffprobe interventions benchmark{' (--quick)' if args.quick else ''}")
    print(f"model: {args.model} ({type(probe.denoiser).__name__}, {n_params / 1e6:.2f}M parameters, "
          f"{len(cross)} cross sites), steps N={n}, edits from t_s={args.t_start}, batch 1 prompt + CFG, "
          f"L={len(sweep_sites)}, median of {args.repeats} interleaved repeats")
    print(f"edit sites: {', '.join(s.label for s in edit_sites)}; traced run bit-identical to plain: {exact}")
    for key, value in machine().items():
        print(f"  {key}: {value}")
    print()
    print(f"{'measure':<28}{'median s':>10}")
    for name, sec in med.items():
        print(f"{name:<28}{sec:>10.4f}")
    print()
    print(f"{'ratio':<40}{'measured':>10}{'target':>10}  result")
    missed = 0
    for label, key, target, direction in TARGETS:
        ok = ratios[key] <= target if direction == "<=" else ratios[key] >= target
        missed += not ok
        print(f"{label:<40}{ratios[key]:>9.2f}x{direction:>4}{target:>5.2f}x  {'pass' if ok else 'MISS'}")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
