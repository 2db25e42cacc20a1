"""Which attention layers of an embedded model decide the *template* (colours, frame)?

    python examples/glyph_template_swap.py [--pairs 16] [--out runs/template] [--model glyph-mmdit]

The companion of glyph_localization.py: source and target prompts keep the word and swap the
template (`a red sign that says "STOP"` -> `a blue book cover that says "STOP"`). Each cross site
alone reads the target prompt's K/V from step 0 (`glyph`: Inject at each cross-attention; `glyph-mmdit`:
Patch of each joint block, K/V from the target prompt's run). Scored with image metrics only: how far each patched
image moved from the source image towards the target image,
``moved = 1 - MSE(patched, target) / MSE(source, target)`` (0: nothing changed, 1: the target image).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import diffprobe as dp
from diffprobe.bench import PromptPair
from diffprobe.experiments import Experiment, run
from diffprobe.zoo import spell_data
from diffprobe.zoo.glyph import data


def template_pairs(n: int, seed: int = 0, model: str = "glyph") -> list[PromptPair]:
    """Same word, two templates: one of glyph's 32 words, or for glyph-mmdit a held-out (never trained) word."""
    d, words = (data, data.WORDS) if model == "glyph" else (spell_data, spell_data.eval_heldout())
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(len(d.TEMPLATES), size=2, replace=False)
        word = words[int(rng.integers(len(words)))]
        out.append(PromptPair(d.prompt(int(a), word), d.prompt(int(b), word), word, word))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("runs/template"))
    ap.add_argument("--model", default="glyph", choices=["glyph", "glyph-mmdit"])
    args = ap.parse_args()
    probe = dp.load(args.model)
    mmdit = args.model == "glyph-mmdit"
    spec = Experiment(model=args.model, pairs=tuple(template_pairs(args.pairs, model=args.model)),
                      intervention="patch" if mmdit else "inject", sites="joint:all" if mmdit else "cross:all",
                      steps=25, metrics=("mse", "ssim"), batch_size=16)
    ds = run(spec, probe=probe, store=args.out, progress=lambda d, n: print(f"template {d}/{n}", flush=True))
    patched = ds.patched_image.values.astype(float)[:, :, 0, 0]      # pair, site, y, x, rgb
    source = ds.source_image.values.astype(float)[:, 0][:, None]      # pair, 1, y, x, rgb
    target = ds.target_image.values.astype(float)[:, 0][:, None]
    to_target = ((patched - target) ** 2).mean((2, 3, 4))             # pair, site
    base = ((source - target) ** 2).mean((2, 3, 4))
    moved = 1 - to_target / base
    lines = ["| site | module | moved towards target (mean ± sd) | SSIM to source |", "|---|---|---|---|"]
    ssim = ds.dp.mean("ssim").sel(t_start=0).values
    for i in range(ds.sizes["site"]):
        lines.append(f"| {ds.site_label.values[i]} | `{ds.site_name.values[i]}` | "
                     f"{moved[:, i].mean():.2f} ± {moved[:, i].std():.2f} | {ssim[i]:.3f} |")
    print("\n".join(lines))
    ds.dp.report(args.out / "report.html", metric="ssim", title=f"{args.model}: which attention layers decide the template?")


if __name__ == "__main__":
    main()
