"""Full-size denoisers through the engine: edits touch only the named sites, and memory does not grow with steps.

    python benchmarks/bench_fullsize.py                    # CPU: SDXL UNet and SD3 transformer, 256 px, 2 and 8 steps
    python benchmarks/bench_fullsize.py --device cuda      # GPU: SDXL at 1024 px in float16, 20 and 50 steps, timings

The denoisers are the real SDXL-base UNet (2.57B parameters) and SD3-medium transformer (2.03B), built from the
bundled configs with random weights (nothing is downloaded); text encoders are one-layer CLIPs with the real
hidden sizes (768 + 1280, pooled 1280 / 2048) and the autoencoder is a small random one with the real latent
channels, so the denoiser sees inputs of the real shapes. The paper's own code cached every step's K/V and
needed 128-256 GB of RAM; diffprobe's engine edits inside one trace, so its peak memory should not depend on
the number of steps.

Checks (CPU and GPU): ``Inject`` at SDXL ``cross:55-57`` from t_s changes the K/V of exactly those sites (the
captured K/V of ``cross:54`` and ``cross:58`` are bit-identical to an unedited run with the same batch; those
of ``cross:55`` equal the target prompt's); ``Patch`` at SD3 ``joint:10`` leaves ``joint:9`` bit-identical at
every step before the edit and at step t_s, and writes the target row's K/V at ``joint:10``. Memory: the peak
resident memory of the process during the call (CPU, sampled every 5 ms) or ``torch.cuda.max_memory_allocated``
(GPU), above the level before the call.

GPU mode also times the plain call, the traced call, an Inject edit, a Patch edit and an L = 8 single-site
sweep batched vs 8 separate runs (targets: traced <= 1.05x plain, Inject <= 1.10x, batched sweep >= 4x).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np
import torch

SRC, TGT = 'A sign that says "STOP".', 'A sign that says "OPEN".'


def _quiet() -> None:
    import warnings

    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore")


def _clip(hidden: int, projection: int | None, seed: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffprobe.zoo.tiny import char_tokenizer

    tok = char_tokenizer(77)
    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1,
                         num_attention_heads=max(1, hidden // 64), max_position_embeddings=77,
                         projection_dim=projection or hidden, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg), tok


def _vae(latent_channels: int, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=[16, 16, 16, 16], in_channels=3, out_channels=3,
                         down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
                         latent_channels=latent_channels, norm_num_groups=8, layers_per_block=1, **extra)


def _denoiser(name: str, dtype):
    from diffprobe.zoo.meta import META_CONFIGS
    import diffusers
    from importlib import resources

    config = json.loads(resources.files("diffprobe.zoo").joinpath("configs", META_CONFIGS[name]).read_text())
    torch.manual_seed(0)
    return getattr(diffusers, config["_class_name"]).from_config(config).to(dtype)


def sdxl(dtype):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    te1, tok = _clip(768, None, 0)
    te2, tok2 = _clip(1280, 1280, 1)
    return StableDiffusionXLPipeline(
        vae=_vae(4), text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
        unet=_denoiser("sdxl-base-1.0", dtype), scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear"),
        force_zeros_for_empty_prompt=True,
    ).to(dtype)


def sd3(dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    te1, tok = _clip(768, 768, 0)
    te2, tok2 = _clip(1280, 1280, 1)
    return StableDiffusion3Pipeline(
        transformer=_denoiser("sd3-medium", dtype), scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(16, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=te1, tokenizer=tok, text_encoder_2=te2, tokenizer_2=tok2, text_encoder_3=None, tokenizer_3=None,
    ).to(dtype)


class PeakRSS:
    """Peak resident memory of this process while the block runs, above the level when it started (bytes)."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.used = self.peak - self.base


def peak_memory(fn, device: str) -> tuple[float, float]:
    """(peak bytes above the start, seconds) of one call of ``fn``."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, time.perf_counter() - start
    with PeakRSS() as m:
        start = time.perf_counter()
        fn()
    return m.used, time.perf_counter() - start


def check_sdxl(probe, size: dict, steps: int, t_start: int) -> dict:
    from diffprobe import Capture, Inject, Variant

    watched = "cross:54 cross:55 cross:58"
    cap = Capture(what="kv", sites=watched)
    edit = Inject(prompt=TGT, sites="cross:55-57", steps=f"{t_start}:")
    edited = probe.run([Variant(SRC, (cap,)), Variant(SRC, (edit, cap)), Variant(TGT, (cap,))], steps=steps, **size)
    clean = probe.run([Variant(SRC, (cap,)), Variant(SRC, (cap,)), Variant(TGT, (cap,))], steps=steps, **size)
    out = {}
    for site in ("cross:54", "cross:58"):
        a, b = edited.captures[f"kv:{site}:k"].values[1], clean.captures[f"kv:{site}:k"].values[1]
        out[f"{site} untouched (bit-identical)"] = bool(np.array_equal(a, b))
    k = edited.captures["kv:cross:55:k"].values
    out["cross:55 K = target's from t_s (max abs diff)"] = float(np.abs(k[1, t_start:] - k[2, t_start:]).max())
    out["cross:55 K = own before t_s (bit-identical)"] = bool(np.array_equal(
        k[1, :t_start], clean.captures["kv:cross:55:k"].values[1, :t_start]))
    out["image changed"] = bool(np.abs(edited.images[1].astype(int) - clean.images[1].astype(int)).max() > 0)
    return out


def check_sd3(probe, size: dict, steps: int, t_start: int) -> dict:
    from diffprobe import Capture, Patch, Variant

    cap = Capture(what="kv", sites="joint:9 joint:10")
    edit = Patch(source=TGT, sites="joint:10", steps=f"{t_start}:")
    edited = probe.run([Variant(SRC, (cap,)), Variant(SRC, (edit, cap)), Variant(TGT, (cap,))], steps=steps, **size)
    clean = probe.run([Variant(SRC, (cap,)), Variant(SRC, (cap,)), Variant(TGT, (cap,))], steps=steps, **size)
    j9e, j9c = edited.captures["kv:joint:9:k"].values[1], clean.captures["kv:joint:9:k"].values[1]
    j10 = edited.captures["kv:joint:10:k"].values
    return {
        "joint:9 untouched up to t_s (bit-identical)": bool(np.array_equal(j9e[: t_start + 1], j9c[: t_start + 1])),
        "joint:10 K = the target row's from t_s (bit-identical)": bool(np.array_equal(j10[1, t_start:], j10[2, t_start:])),
        "image changed": bool(np.abs(edited.images[1].astype(int) - clean.images[1].astype(int)).max() > 0),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--models", default="sdxl,sd3")
    parser.add_argument("--size", type=int, default=None, help="image size in px (CPU 256, GPU 1024)")
    parser.add_argument("--steps", default=None, help="two step counts, e.g. 2,8 (CPU) or 20,50 (GPU)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    import diffprobe
    from diffprobe.results import versions

    gpu = args.device == "cuda"
    dtype = torch.float16 if gpu else torch.float32
    size = args.size or (1024 if gpu else 256)
    steps = [int(s) for s in (args.steps or ("20,50" if gpu else "2,8")).split(",")]
    report: dict = {"device": args.device, "dtype": str(dtype), "size": size, "steps": steps, **versions()}
    if gpu:
        report["gpu"] = torch.cuda.get_device_name()
    for name in args.models.split(","):
        build = {"sdxl": sdxl, "sd3": sd3}[name]
        start = time.perf_counter()
        probe = diffprobe.load(build(dtype), device=args.device, dtype=None)
        px = {"height": size, "width": size}
        entry: dict = {"params": sum(p.numel() for p in probe.denoiser.parameters()),
                       "build_s": round(time.perf_counter() - start, 1), "runtime": probe.runtime}
        check = check_sdxl if name == "sdxl" else check_sd3
        entry["checks"] = check(probe, px, steps[0], t_start=1)
        edit = (diffprobe.Inject(prompt=TGT, sites="cross:55-57", steps="1:") if name == "sdxl"
                else diffprobe.Patch(source=TGT, sites="joint:10", steps="1:"))
        for n in steps:
            mem, sec = peak_memory(lambda: probe.generate(SRC, [edit], steps=n, seed=0, **px), args.device)
            entry[f"edit {n} steps"] = {"peak_mib": round(mem / 2**20, 1), "seconds": round(sec, 1)}
        if gpu:
            entry["timings"] = time_gpu(probe, px, steps)
        report[name] = entry
        print(json.dumps({name: entry}, indent=1), flush=True)
        del probe
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=1)
    ok = all(v is True or not isinstance(v, bool) for m in args.models.split(",") for v in report[m]["checks"].values())
    return 0 if ok else 1


def time_gpu(probe, px: dict, steps: list[int]) -> dict:
    """GPU timings (median of 3): plain, traced, Inject, Patch, and an L = 8 sweep batched vs separate."""
    import statistics

    from diffprobe import Inject, Patch, Variant

    pipe = probe.pipeline
    out = {}
    sites = list(probe.sites.of_kind(probe.sites.kinds[-1] if "cross" not in probe.sites.kinds else "cross"))[:8]
    for n in steps:
        sweep = [Variant(SRC, (Patch(source=TGT, sites=[s], steps="1:"),)) for s in sites]
        fns = {
            "plain": lambda: pipe(SRC, num_inference_steps=n, generator=torch.Generator("cuda").manual_seed(0), **px),
            "traced": lambda: probe.generate(SRC, steps=n, seed=0, **px),
            "inject": lambda: probe.generate(SRC, [Inject(prompt=TGT, sites=sites[:3], steps="1:")], steps=n, **px)
            if "cross" in probe.sites.kinds else None,
            "patch": lambda: probe.generate(SRC, [Patch(source=TGT, sites=sites[:3], steps="1:")], steps=n, **px),
            "sweep batched": lambda: probe.run(sweep, steps=n, **px),
            "sweep separate": lambda: [probe.run([v], steps=n, **px) for v in sweep],
        }
        times = {}
        for key, fn in fns.items():
            runs = []
            for _ in range(3):
                torch.cuda.synchronize()
                t = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                runs.append(time.perf_counter() - t)
            times[key] = statistics.median(runs)
        times["traced/plain"] = times["traced"] / times["plain"]
        times["inject/plain"] = times["inject"] / times["plain"]
        times["patch/plain"] = times["patch"] / times["plain"]
        times["sweep separate/batched"] = times["sweep separate"] / times["sweep batched"]
        out[f"{n} steps"] = {k: round(v, 3) for k, v in times.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
