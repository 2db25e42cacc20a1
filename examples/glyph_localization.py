"""The paper's localization study on the embedded glyph model, end to end; writes a markdown summary.

    python examples/glyph_localization.py [--pairs 40] [--balanced] [--length-pairs 16] [--ts-sites 3]
        [--no-counts] [--engines] [--out runs/science] [--summary docs/science-results.md]

1. Layer sweep: inject the target prompt's text K/V into one cross-attention site at a time from
   step 0 of 25, for N source/target pairs (same template, other word): ``glyph_pairs(N, seed=1)``, or
   with ``--balanced`` a third each with a target word shorter than, as long as, and longer than the source.
2. t_s sweep: the top 3 sites of step 1 (``--ts-sites``), from t_s = 5 and 10.
3. Layer-count trade-off: inject into the top 1, 2, 3, 5 and all sites (ranked by step 1) together
   (``--no-counts`` skips it).
4. Where is the word's length decided? On M pairs whose target word is *shorter* than the source
   (MILK -> CAT), the top site alone, the top site together with each other site, and all sites; scored
   by the length view (``length_match_target``: the reading has as many letters as the target).
   ``--length-pairs 0`` skips it.
5. The HTML report, and markdown tables of every site: OCR F1 to the target (per-sample mean, and the
   paper's set F1), exact match, the length view, F1 to the source, SSIM to the unpatched source image,
   with 95% confidence intervals; the length view split by pairs whose target is shorter than, as long
   as or longer than the source.
6. ``--engines``: Tesseract vs EasyOCR on the unpatched (source and target) images of the sweeps:
   agreement and each engine's exact rate against the prompted word.
Resumable: rerun the same command after an interruption. A store written with other weights (say,
before the model was retrained) is refused: use a fresh --out then.
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np

import diffprobe as dp
import diffprobe.zoo.glyph
from diffprobe.experiments import Experiment, count_follow_up, run
from diffprobe.glyph_bench import glyph_pairs
from diffprobe.metrics import exact_match, paper_set_f1, rendered_length
from diffprobe.results import share_baselines

NAMES = ("ocr_f1_target", "paper_set_f1", "exact_target", "length_match_target", "lev_target", "ocr_f1_source", "ssim")
HEAD = "F1 to target | paper set F1 | exact target | right length | Lev to target | F1 to source | SSIM to source"
KINDS = ("shorter", "equal", "longer")


def fmt(ci, name, i, t=None):
    """'mean ± half-width' of a metric at the i-th site (or count), at step window t_s = t."""
    if name == "paper_set_f1":
        cell = ci[name].isel({"site": i} if "site" in ci[name].dims else {"n_sites": i})
        cell = cell.sel(t_start=t) if t is not None else cell.isel(t_start=0)
        return f"{float(cell):.2f}"
    cell = ci[name].isel({"site": i} if "site" in ci[name].dims else {"n_sites": i})
    cell = cell.sel(t_start=t) if t is not None else cell.isel(t_start=0)
    return f"{float(cell['mean']):.2f} ± {float(cell['ci']):.2f}"


def summaries(ds):
    out = {n: ds.dp.mean_ci(n) for n in NAMES if n != "paper_set_f1"}
    out["paper_set_f1"] = ds.dp.paper_set_f1()
    return out


def kind(pair_source: str, pair_target: str) -> str:
    """Whether the target word is shorter than, as long as, or longer than the source word."""
    a, b = len(pair_source), len(pair_target)
    return "shorter" if b < a else "equal" if b == a else "longer"


def length_split(match: np.ndarray, kinds: list[str]) -> str:
    """'rate (n)' of the right length, per kind of pair and over all; ``match`` is (pair, seed)."""
    match = np.asarray(match, dtype=float).reshape(len(kinds), -1)
    cells = []
    for k in (*KINDS, None):
        rows = [i for i, kd in enumerate(kinds) if k is None or kd == k]
        v = match[rows].ravel() if rows else np.array([])
        v = v[~np.isnan(v)]
        cells.append(f"{v.mean():.2f} ({v.size})" if v.size else "-")
    return " | ".join(cells)


def baseline(ds, role: str, name: str) -> float:
    return float(ds[f"baseline_{name}"].sel(role=role).mean())


def baseline_paper_f1(ds, role: str = "target") -> float:
    p = ds["baseline_paper_precision_target"].sel(role=role).values.ravel()
    r = ds["baseline_paper_recall_target"].sel(role=role).values.ravel()
    return paper_set_f1(p, r)


def length_pairs(m: int) -> tuple:
    """``m`` glyph pairs whose target word is shorter than the source (HELLO -> MILK, MILK -> CAT)."""
    pool = [p for p in glyph_pairs(400, seed=2) if len(p.target_text) < len(p.source_text)]
    return tuple(pool[:m])


def balanced_pairs(n: int) -> tuple:
    """``n`` glyph pairs, a third each (in turn) with a target word shorter / as long as / longer than the source."""
    pool = glyph_pairs(2000, seed=1)
    by = {k: [p for p in pool if kind(p.source_text, p.target_text) == k] for k in KINDS}
    return tuple(by[KINDS[i % 3]][i // 3] for i in range(n))


def ts_table(dt) -> list[str]:
    """The t_s sweep's markdown table: a row per (site, t_s)."""
    ct = summaries(dt)
    lines = ["", f"### t_s sweep (top {dt.sizes['site']} sites)", "", f"| site | t_s | {HEAD} |", "|---" * 9 + "|"]
    for i in range(dt.sizes["site"]):
        for t in dt.t_start.values:
            lines.append(f"| {dt.site_label.values[i]} | {int(t)} | " + " | ".join(fmt(ct, n, i, int(t)) for n in NAMES) + " |")
    return lines


def count_table(dc, probe) -> list[str]:
    """The layer-count markdown table: a row per number of sites, with their K/V parameters."""
    cc = summaries(dc)
    lines = ["", "### Layer count (t_s = 0)", "", f"| sites | K/V params (fraction) | {HEAD} |", "|---" * 9 + "|"]
    for i, used in enumerate(dc.sites_used.values):
        c = probe.count(str(used))
        lines.append(f"| {used} | {c['localized_params']:,} ({100 * c['fraction']:.2f}%) | " + " | ".join(fmt(cc, n, i) for n in NAMES) + " |")
    return lines


def misreads(ds, i: int, group: str = "site") -> list[str]:
    ocr = ds["ocr_text"].isel({group: i, "t_start": 0}).transpose("pair", "seed").values
    out = []
    for p in range(ds.sizes["pair"]):
        for s in range(ds.sizes["seed"]):
            src, tgt, read = str(ds.source_text.values[p]), str(ds.target_text.values[p]), str(ocr[p, s])
            if not exact_match(read, tgt):
                out.append(f"{src} -> {tgt} reads `{read}`")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=40)
    ap.add_argument("--balanced", action="store_true", help="pairs balanced by target length (shorter/equal/longer)")
    ap.add_argument("--length-pairs", type=int, default=16, help="pairs with a shorter target word for step 4 (0: skip)")
    ap.add_argument("--ts-sites", type=int, default=3, help="how many top sites the t_s sweep takes (0: skip)")
    ap.add_argument("--no-counts", action="store_true", help="skip the layer-count sweep")
    ap.add_argument("--engines", action="store_true", help="Tesseract vs EasyOCR on the unpatched images")
    ap.add_argument("--out", type=Path, default=Path("runs/science"))
    ap.add_argument("--summary", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    weights = next(iter(sorted((Path(dp.zoo.glyph.default_model_path()) / "unet").glob("*.safetensors"))))
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]  # before loading: the weights this run used
    probe = dp.load("glyph")
    pairs = balanced_pairs(args.pairs) if args.balanced else tuple(glyph_pairs(args.pairs, seed=1))
    spec = Experiment(model="glyph", pairs=pairs, intervention="inject", sites="cross:all", t_starts=(0,),
                      steps=25, batch_size=args.batch_size)
    ds = run(spec, probe=probe, store=args.out / "layers", progress=lambda d, n: print(f"layers {d}/{n}", flush=True))
    count_spec = count_follow_up(spec, ds)
    ranked = count_spec.sites
    ts_spec = spec.replace(sites=ranked[:max(1, args.ts_sites)], t_starts=(5, 10))
    for name in ("timesteps", "counts"):  # same pairs, seeds and settings: reuse the unpatched baselines
        share_baselines(args.out / "layers", args.out / name)
    dc = None if args.no_counts else run(count_spec, probe=probe, store=args.out / "counts",
                                         progress=lambda d, n: print(f"counts {d}/{n}", flush=True))

    # 4. the length: the top site with each other site, on pairs whose target word is shorter
    with_top = {}
    if args.length_pairs:
        lp = length_pairs(args.length_pairs)
        top, first = ranked[0], None
        for group in [(top,), *[(top, s) for s in ranked[1:]], tuple(ranked)]:
            name = "length/" + "+".join(s.replace(":", "") for s in group) if len(group) < len(ranked) else "length/all"
            if first is not None:
                share_baselines(args.out / first, args.out / name)
            lspec = spec.replace(pairs=lp, sites=group, grouping="cumulative", counts=(len(group),))
            with_top[group] = run(lspec, probe=probe, store=args.out / name,
                                  progress=lambda d, n, nm=name: print(f"{nm} {d}/{n}", flush=True))
            first = first or name

    dt = None if not args.ts_sites else run(ts_spec, probe=probe, store=args.out / "timesteps",
                                            progress=lambda d, n: print(f"t_s {d}/{n}", flush=True))
    report = ds.dp.report(args.out / "report.html", counts=dc, title="glyph: which cross-attention layers write the text?")
    if dt is not None:
        dt.dp.report(args.out / "report_timesteps.html", title=f"glyph: t_s sweep on the top {args.ts_sites} sites")

    ci = summaries(ds)
    lines = [f"Model `glyph` (unet weights sha256 {digest}), {len(pairs)} pairs, 25 steps, seed 0, "
             "guidance 7.0 (the pipeline's default).", ""]
    lines += [f"Unpatched source images: OCR F1 to source {baseline(ds, 'source', 'ocr_f1_source'):.2f}, "
              f"to target {baseline(ds, 'source', 'ocr_f1_target'):.2f}; unpatched target images: OCR F1 to target "
              f"{baseline(ds, 'target', 'ocr_f1_target'):.2f} (paper set F1 {baseline_paper_f1(ds):.2f}), exact "
              f"{baseline(ds, 'target', 'exact_target'):.2f}, right length {baseline(ds, 'target', 'length_match_target'):.2f}, "
              f"Levenshtein {baseline(ds, 'target', 'lev_target'):.2f}.", ""]
    lines += ["### Layer sweep (t_s = 0)", "", f"| site | module | {HEAD} |", "|---" * 9 + "|"]
    for i in range(ds.sizes["site"]):
        lines.append(f"| {ds.site_label.values[i]} | `{ds.site_name.values[i]}` | " + " | ".join(fmt(ci, n, i, 0) for n in NAMES) + " |")
    if dt is not None:
        lines += ts_table(dt)
    if dc is not None:
        lines += count_table(dc, probe)

    # the length view, split by the kind of pair
    kinds = [kind(str(a), str(b)) for a, b in zip(ds.source_text.values, ds.target_text.values)]
    counts = {k: kinds.count(k) for k in KINDS}
    lines += ["", f"### The length view: right length by kind of pair ({len(pairs)} pairs: target shorter {counts['shorter']}, "
              f"equal {counts['equal']}, longer {counts['longer']})", "",
              "| images | target shorter | equal | target longer | all |", "|---|---|---|---|---|"]
    lines.append("| unpatched target prompt | " + length_split(ds["baseline_length_match_target"].sel(role="target").transpose("pair", "seed").values, kinds) + " |")
    for i in range(ds.sizes["site"]):
        if str(ds.site_label.values[i]) in ranked[:3]:
            lines.append(f"| {ds.site_label.values[i]} | " + length_split(ds["length_match_target"].isel(site=i, t_start=0).transpose("pair", "seed").values, kinds) + " |")
    for i, used in enumerate(dc.sites_used.values if dc is not None else []):
        if i:
            lines.append(f"| {used} | " + length_split(dc["length_match_target"].isel(n_sites=i, t_start=0).transpose("pair", "seed").values, kinds) + " |")
    top_i = [str(s) for s in ds.site_label.values].index(ranked[0])
    missed = misreads(ds, top_i)
    lines += ["", f"Misreads at {ranked[0]} ({len(missed)}): " + ("; ".join(missed) or "none") + "."]

    if with_top:
        lp = length_pairs(args.length_pairs)
        d0 = next(iter(with_top.values()))
        lines += ["", f"### Where is the length decided? {len(lp)} pairs with a shorter target word", "",
                  f"Unpatched target prompt: right length {baseline(d0, 'target', 'length_match_target'):.2f}, exact "
                  f"{baseline(d0, 'target', 'exact_target'):.2f}; unpatched source: reads the target's length "
                  f"{baseline(d0, 'source', 'length_match_target'):.2f}.", "",
                  "| sites | right length | exact target | F1 to target | Lev to target | letters read - target letters | F1 to source | SSIM to source |",
                  "|---|---|---|---|---|---|---|---|"]
        for group, dl in with_top.items():
            c = {n: dl.dp.mean_ci(n) for n in ("length_match_target", "exact_target", "ocr_f1_target", "lev_target",
                                                 "ocr_f1_source", "ssim")}
            reads = dl["ocr_text"].isel(n_sites=0, t_start=0).transpose("pair", "seed").values
            excess = np.mean([rendered_length(str(r)) - len(str(t)) for r, t in
                              zip(reads.ravel(), np.repeat(dl.target_text.values, reads.shape[1]))])
            label = "all sites" if len(group) == len(ranked) else " + ".join(group)
            lines.append(f"| {label} | " + " | ".join(fmt(c, n, 0) for n in ("length_match_target", "exact_target",
                                                                              "ocr_f1_target", "lev_target")) +
                         f" | {excess:+.2f} | " + " | ".join(fmt(c, n, 0) for n in ("ocr_f1_source", "ssim")) + " |")
        missed = misreads(with_top[(ranked[0],)], 0, "n_sites")
        lines += ["", f"Misreads at {ranked[0]} alone ({len(missed)}): " + ("; ".join(missed) or "none") + "."]

    if args.engines:
        lines += ["", *engine_agreement(ds, ranked[0], list(with_top.values()))]
    text = "\n".join(lines) + "\n"
    print(text)
    print("report:", report)
    if args.summary:
        args.summary.write_text(text)


def engine_agreement(ds, top: str, length_runs) -> list[str]:
    """Tesseract (the sweeps' readings) vs EasyOCR on generated images: every unpatched image of the sweeps
    (deduplicated), the layer sweep's images at the top site and every image of the length runs (all of
    which inject the top site, so the intended word is the target's)."""
    from diffprobe.metrics import read_texts

    seen, images, tess, words, what = set(), [], [], [], []
    for d in [ds, *length_runs]:
        for role in ("source", "target"):
            for p in range(d.sizes["pair"]):
                for s in range(d.sizes["seed"]):
                    key = (str(d[f"{role}_prompt"].values[p]), int(d.seed.values[s]))
                    if key in seen:
                        continue
                    seen.add(key)
                    images.append(d[f"{role}_image"].values[p, s])
                    tess.append(str(d[f"{role}_ocr_text"].values[p, s]))
                    words.append(str(d[f"{role}_text"].values[p]))
                    what.append("unpatched")
    top_i = [str(x) for x in ds.site_label.values].index(top)
    patched = [(ds.isel(site=top_i, t_start=0), f"{top} patched")]
    patched += [(d.isel(n_sites=0, t_start=0), "length runs") for d in length_runs]
    for d, label in patched:
        img = d["patched_image"].transpose("pair", "seed", ...).values
        read = d["ocr_text"].transpose("pair", "seed").values
        for p in range(d.sizes["pair"]):
            for s in range(d.sizes["seed"]):
                images.append(img[p, s]), tess.append(str(read[p, s]))
                words.append(str(d.target_text.values[p])), what.append(label)
    t0 = time.time()
    easy = read_texts(np.stack(images), engine="easyocr")
    secs = time.time() - t0
    rows = ["| images | n | engines agree exactly | Tesseract exact vs intended word | EasyOCR exact vs intended word |",
            "|---|---|---|---|---|"]
    for label in (*dict.fromkeys(what), None):
        idx = [i for i, w in enumerate(what) if label is None or w == label]
        n = len(idx)
        agree = sum(exact_match(tess[i], easy[i]) for i in idx)
        t_ok = sum(exact_match(tess[i], words[i]) for i in idx)
        e_ok = sum(exact_match(easy[i], words[i]) for i in idx)
        rows.append(f"| {label or 'all'} | {n} | {agree} ({agree / n:.2f}) | {t_ok} ({t_ok / n:.2f}) | {e_ok} ({e_ok / n:.2f}) |")
    differ = [f"{words[i]}: tesseract `{tess[i]}`, easyocr `{easy[i]}`" for i in range(len(images))
              if not exact_match(tess[i], easy[i])]
    return [f"### OCR engines on generated images ({len(images)} images; EasyOCR read them in {secs:.0f} s)", "",
            *rows, "", "Disagreements: " + ("; ".join(differ) or "none") + "."]


if __name__ == "__main__":
    main()
