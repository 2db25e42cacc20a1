"""The paper's localization study on the embedded models that spell any word: the SD3 experiment on the
joint-attention model `glyph-mmdit`, and the UNet study of docs/science.md on `spell` (the open vocabulary of
issue 14); writes a markdown summary.

    python examples/open_vocab_localization.py [--pairs 16] [--t-starts 5,10,15] [--ts-sites 2]
        [--out runs/mmdit_science] [--summary out.md] [--model training/mmdit/checkpoint --max-letters 3 --font mono]
    python examples/open_vocab_localization.py --model spell [--font mono] ...
    python examples/open_vocab_localization.py --model spell --bench simple ...   # the paper's SimpleBench pairs

1. Layer sweep, from step 0 of 25, for N source/target pairs of words the model never saw in training
   (``spell_pairs(N, seed=1)``: same template, another held-out word; with ``--max-letters``/``--font``,
   held-out words of 3 to that many letters in that face: what a curriculum snapshot such as
   ``training/mmdit/checkpoint`` writes); with ``--bench simple``, the paper's own prompt ``A sign that says
   "<word>".`` for pairs of English words of 3-8 letters from four frequency buckets (``simple_bench(N, seed=1)``,
   training and held-out words alike: no colour, template or face named). A joint-attention model: ``Patch``
   one joint block at a time (its K/V, image and text streams alike, from the target prompt's run in the same
   batch); a UNet: ``Inject`` the target prompt's text K/V into one cross-attention site at a time (as
   docs/science.md on `glyph`).
2. t_s sweep: the top sites of step 1 (``--ts-sites``), patched only from step t_s on.
3. Layer-count trade-off: the top 1, 2, 3, 5 and all sites together.
Scores as docs/science.md, plus "moved to target" from the pixels alone (diffprobe's ``moved_target``): OCR F1 /
exact / right length to the target, F1 to the source, SSIM to the unpatched source image, with 95% intervals
over pairs. Resumable: rerun the same command after an interruption.
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

import diffprobe as dp
from diffprobe.bench import simple_bench
from diffprobe.experiments import Experiment, count_follow_up, run
from diffprobe.glyph_bench import spell_pairs
from diffprobe.results import share_baselines
from diffprobe.zoo import glyph_mmdit, spell
from glyph_localization import HEAD, NAMES, baseline, baseline_paper_f1, count_table, fmt, misreads, summaries, ts_table


def moved(ds, group: str = "site") -> np.ndarray:
    """(pair, site or n_sites): diffprobe's ``moved_target`` at t_s = 0, seed 0: how far each patched image moved
    from the source image to the target image, from pixels alone; 0 = unchanged, 1 = the target image."""
    return ds.moved_target.isel(t_start=0, seed=0).transpose("pair", group).values


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument("--t-starts", default="5,10,15", help="t_s values of the t_s sweep")
    ap.add_argument("--ts-sites", type=int, default=2, help="how many top sites the t_s sweep takes (0: skip)")
    ap.add_argument("--out", type=Path, default=Path("runs/mmdit_science"))
    ap.add_argument("--summary", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--model", default="glyph-mmdit",
                    help="a shipped model (glyph-mmdit, spell), or a trainer snapshot's folder")
    ap.add_argument("--bench", choices=("heldout", "simple"), default="heldout",
                    help="heldout: the model's own prompts with held-out words; simple: the paper's SimpleBench pairs")
    ap.add_argument("--max-letters", type=int, default=None, help="held-out words of 3 to this many letters only")
    ap.add_argument("--font", default=None, help="ask for this face (mono, sans, serif)")
    ap.add_argument("--rank-by", choices=("f1", "moved"), default="f1",
                    help="order of the layer count and t_s sweep: OCR F1 to the target (the paper's), or 'moved' "
                         "(pixels; robust where OCR reads little)")
    args = ap.parse_args()
    if args.bench == "simple" and (args.max_letters or args.font):
        ap.error("--bench simple draws its own words and names no face: drop --max-letters and --font")

    shipped = {glyph_mmdit.NAME: glyph_mmdit.default_model_path(), spell.NAME: spell.default_model_path()}
    folder = shipped.get(args.model, Path(args.model))
    denoiser = "transformer" if (folder / "transformer").is_dir() else "unet"
    weights = sorted((folder / denoiser).glob("*.safetensors"))[0]
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    probe = dp.load(args.model)
    joint = "joint" in probe.sites.kinds
    intervention, sites = ("patch", "joint:all") if joint else ("inject", "cross:all")
    pairs = tuple(simple_bench(args.pairs, seed=1) if args.bench == "simple" else
                  spell_pairs(args.pairs, seed=1, max_letters=args.max_letters, font=args.font))
    spec = Experiment(model=args.model, pairs=pairs, intervention=intervention, sites=sites, t_starts=(0,),
                      steps=25, batch_size=args.batch_size)
    ds = run(spec, probe=probe, store=args.out / "layers", progress=lambda d, n: print(f"layers {d}/{n}", flush=True))
    count_spec = count_follow_up(spec, ds, "moved_target" if args.rank_by == "moved" else "ocr_f1_target")
    suffix = "-moved" if args.rank_by == "moved" else ""
    ranked = count_spec.sites
    for name in ("timesteps", "counts"):
        share_baselines(args.out / "layers", args.out / (name + suffix))
    dc = run(count_spec, probe=probe, store=args.out / ("counts" + suffix), progress=lambda d, n: print(f"counts {d}/{n}", flush=True))
    t_starts = tuple(int(t) for t in args.t_starts.split(",") if t.strip())
    dt = None
    if args.ts_sites and t_starts:
        ts_spec = spec.replace(sites=ranked[:args.ts_sites], t_starts=t_starts)
        dt = run(ts_spec, probe=probe, store=args.out / ("timesteps" + suffix), progress=lambda d, n: print(f"t_s {d}/{n}", flush=True))
    where = "joint-attention blocks" if joint else "cross-attention layers"
    report = ds.dp.report(args.out / "report.html", counts=dc, title=f"{args.model}: which {where} write the text?")

    ci = summaries(ds)
    how = "`Patch` (K/V from the target prompt's run)" if joint else "`Inject` (the target prompt's text K/V)"
    words = (f" of 3-{args.max_letters} letters" if args.max_letters else "") + (f" in {args.font}" if args.font else "")
    guidance = probe.defaults.get("guidance", "the pipeline default")
    kind = "SimpleBench pairs (`A sign that says \"<word>\".`)" if args.bench == "simple" else "pairs of held-out words"
    lines = [f"Model `{args.model}` ({denoiser} weights sha256 {digest}), {len(pairs)} {kind}{words}, "
             f"{how}, 25 steps, seed 0, guidance {guidance}.", ""]
    lines += [f"Unpatched source images: OCR F1 to source {baseline(ds, 'source', 'ocr_f1_source'):.2f}, "
              f"to target {baseline(ds, 'source', 'ocr_f1_target'):.2f}; unpatched target images: OCR F1 to target "
              f"{baseline(ds, 'target', 'ocr_f1_target'):.2f} (paper set F1 {baseline_paper_f1(ds):.2f}), exact "
              f"{baseline(ds, 'target', 'exact_target'):.2f}, right length {baseline(ds, 'target', 'length_match_target'):.2f}.", ""]
    mv = moved(ds)
    lines += ["### Layer sweep (t_s = 0)", "", f"| site | module | moved to target | {HEAD} |", "|---" * 10 + "|"]
    for i in range(ds.sizes["site"]):
        lines.append(f"| {ds.site_label.values[i]} | `{ds.site_name.values[i]}` | {mv[:, i].mean():.2f} ± {mv[:, i].std():.2f} | "
                     + " | ".join(fmt(ci, n, i, 0) for n in NAMES) + " |")
    if dt is not None:
        lines += ts_table(dt)
    mc = moved(dc, "n_sites").mean(0)
    lines += count_table(dc, probe)
    lines += ["", "Moved to target, layer-count rows in order: " + ", ".join(f"{m:.2f}" for m in mc) + "."]
    top_i = [str(s) for s in ds.site_label.values].index(ranked[0])
    missed = misreads(ds, top_i)
    lines += ["", f"Misreads at {ranked[0]} ({len(missed)}): " + ("; ".join(missed) or "none") + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    print("report:", report)
    if args.summary:
        args.summary.write_text(text)


if __name__ == "__main__":
    main()
