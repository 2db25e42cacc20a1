"""Text editing with the localized layers, and its comparison with the methods people use today.

Why it works. The localization study (docs/science.md) finds the few attention layers whose text keys/values decide
the rendered text. Making only those layers read the target prompt, from step ``t_s`` on, changes the text and
leaves every other layer -- and so the layout, colours and background -- reading the source prompt: the paper's
editing method. On cross sites that is :class:`~diffprobe.Inject` (K/V from the target's embeddings, no extra
denoiser row); on joint/single sites :class:`~diffprobe.Patch` (the target runs as a row of the same batch).

What it is compared with (:func:`compare`, same pairs, seeds and step count for every method, one process):

1. ``localized top-k``: the edit at the k best sites (k = 1, 2, 3) from ``t_s``;
2. ``all text sites``: the same edit at every cross/joint site from ``t_s``;
3. ``prompt swap``: the target prompt from the same noise (no intervention);
4. ``prompt-to-prompt``: the target prompt's run whose cross-attention probabilities are the source run's for the
   first ``tau`` share of the steps (Hertz et al. 2022, word swap) -- :class:`~diffprobe.interventions.ReplaceAttention`,
   computed inside the same batched trace: the source is a row of the same call, nothing is forked or swapped.

Metrics: OCR character F1 and exact match against the new and the old text; MSE / PSNR / SSIM against the source
image over the whole image and outside the text box (the embedded glyph model's renderer knows its box, see
:func:`glyph_text_box`; for other models pass ``box=``); wall time per edit, each method's batch timed in turn.
"""
from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InterventionError
from .interventions import Inject, Patch, ReplaceAttention
from .plan import Variant

__all__ = ["EditResult", "edit_text", "target_prompt", "resolve_sites", "glyph_text_box", "compare", "time_methods",
           "markdown_table"]


@dataclass
class EditResult:
    """The source and the edited image (uint8, height x width x rgb) and what made them."""

    source: np.ndarray
    edited: np.ndarray
    prompt: str
    target_prompt: str
    sites: tuple[str, ...]
    t_start: int
    seed: int
    steps: int


_QUOTED = re.compile(r'"([^"]*)"')


def target_prompt(prompt: str, new_text: str) -> str:
    """``prompt`` with its quoted text replaced: ``a sign that says "STOP"`` -> ``a sign that says "GO"``."""
    found = _QUOTED.findall(prompt)
    if len(found) != 1:
        raise InterventionError(
            f"cannot tell which text to replace in {prompt!r}: it needs exactly one quoted text (\"...\"); "
            "pass the whole target prompt instead.", field="text")
    if not new_text.strip() or '"' in new_text:
        raise InterventionError(f"the new text {new_text!r} must be non-empty and hold no quote marks.", field="text")
    return _QUOTED.sub(lambda _: f'"{new_text}"', prompt, count=1)


def check_expressible(probe, prompt: str, text: str) -> None:
    """Refuse a ``text`` whose tokens in ``prompt`` include the tokenizer's unknown token (e.g. a word outside the
    embedded glyph model's 32-word vocabulary)."""
    from .attention import token_table, word_tokens

    table = token_table(probe, prompt)
    bad = [table[i].text for i in word_tokens(table, prompt, text) if table[i].unknown]
    if bad:
        raise InterventionError(f"the tokenizer of {probe.name} cannot express {text!r} (it reads it as the unknown "
                                f"token {bad[0]!r}); choose a text its vocabulary holds.", field="text")


def resolve_sites(probe, sites) -> tuple[str, int | None]:
    """A site selection and (if the source says) t_s from: a selection (``"cross:9 cross:10"``, a list), a
    ``localize`` folder or its ``localized.json``, or a sweep's results folder (its top 3 sites)."""
    if sites is None:
        raise InterventionError("name the sites to edit (e.g. --sites cross:9), or a `diffprobe localize` folder / "
                                "localized.json, or a sweep's results folder.", field="sites")
    if isinstance(sites, (str, Path)) and Path(sites).exists():
        from .localization import LOCALIZED_FILE, load_localized

        path = Path(sites)
        if path.suffix == ".json" or (path / LOCALIZED_FILE).exists():
            loc = load_localized(path)
            return " ".join(s.label for s in loc.sites_on(probe)), loc.t_start
        from .ranking import default_metric, rank_sites
        from .results import open_results

        ds = open_results(path)
        ranked = rank_sites(ds, default_metric(ds), k=3)
        best = ranked[0].best.get("t_start") if ranked else None
        return " ".join(s.label for s in ranked), None if best is None else int(best)
    if not isinstance(sites, str):
        sites = " ".join(getattr(s, "label", s) for s in sites)
    return sites, None


def edit_intervention(probe, target: str, sites: str, t_start: int):
    """Inject on cross sites, Patch on joint/single sites; refuses self-attention sites."""
    chosen = probe.sites.parse(sites)
    bad = [s for s in chosen if not s.carries_text]
    if bad:
        raise InterventionError(f"{bad[0].label} is a self-attention site: text edits need text sites "
                                f"({', '.join(probe.sites.kinds)} here; e.g. 'cross:all').", field="sites")
    if all(s.kind == "cross" for s in chosen) and probe.adapter.supports_inject:
        return Inject(prompt=target, sites=sites, steps=f"{t_start}:")
    return Patch(source=target, sites=sites, steps=f"{t_start}:")


def edit_text(probe, prompt: str, new_text: str | None = None, *, target: str | None = None, sites=None,
              t_start: int | None = None, steps: int = 25, seed: int = 0, guidance: float | None = None
              ) -> EditResult:
    """Edit the text ``prompt`` renders: make only ``sites`` read the target prompt from step ``t_start`` on.

    ``new_text`` replaces the prompt's quoted text; or give the whole ``target`` prompt. ``sites``: a selection,
    a ``localize`` folder / ``localized.json`` (which also gives t_s), or a sweep's results folder (its top 3).
    Returns the source and the edited image, made in one batched call with the same seed."""
    if (new_text is None) == (target is None):
        raise InterventionError("give the new text or the target prompt (one of them).", field="text")
    tgt = target_prompt(prompt, new_text) if new_text is not None else target
    if new_text is not None:
        check_expressible(probe, tgt, new_text)
    spec, found_t = resolve_sites(probe, sites)
    t_s = t_start if t_start is not None else (found_t if found_t is not None else 0)
    iv = edit_intervention(probe, tgt, spec, t_s)
    gen = probe.run([Variant(prompt, (), seed), Variant(prompt, (iv,), seed)], steps=steps, guidance=guidance)
    labels = tuple(s.label for s in probe.sites.parse(spec))
    return EditResult(gen.images[0], gen.images[1], prompt, tgt, labels, t_s, seed, steps)


# -- the comparison ------------------------------------------------------------------------------------------------
def glyph_text_box(words: Sequence[str], margin: int = 1) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the union of the boxes the glyph renderer draws ``words`` in."""
    from PIL import Image, ImageDraw

    from .zoo.glyph import data

    font = data._font()
    top, bottom = font.getbbox("H")[1], font.getbbox("H")[3]
    y = (data.HEIGHT - (bottom - top)) // 2 - top
    draw = ImageDraw.Draw(Image.new("RGB", (data.WIDTH, data.HEIGHT)))
    boxes = [draw.textbbox((data.TEXT_X, y), w.upper(), font=font) for w in words]
    x0, y0 = min(b[0] for b in boxes) - margin, min(b[1] for b in boxes) - margin
    x1, y1 = max(b[2] for b in boxes) + margin, max(b[3] for b in boxes) + margin
    return max(0, x0), max(0, y0), min(data.WIDTH, x1), min(data.HEIGHT, y1)


def image_scores(edited: np.ndarray, source: np.ndarray, box: tuple[int, int, int, int] | None) -> dict[str, float]:
    """MSE / PSNR / SSIM to the source over the whole image and (with ``box``) outside it."""
    from skimage.metrics import structural_similarity

    from .metrics import image as im

    out = {"ssim": im.ssim(edited, source), "psnr": im.psnr(edited, source), "mse": im.mse(edited, source)}
    if box is None:
        return out
    a, b = edited.astype(np.float64), source.astype(np.float64)
    keep = np.ones(a.shape[:2], bool)
    x0, y0, x1, y1 = box
    keep[y0:y1, x0:x1] = False
    err = float(np.mean((a[keep] - b[keep]) ** 2))
    side = min(a.shape[:2])
    _, smap = structural_similarity(a, b, data_range=255.0, channel_axis=-1, win_size=min(7, side - (side % 2 == 0)),
                                    full=True)
    out.update(ssim_outside=float(smap.mean(-1)[keep].mean()), mse_outside=err,
               psnr_outside=float("inf") if err == 0 else float(10 * np.log10(255.0 ** 2 / err)))
    return out


def _methods(probe, top: Sequence[str], t_start: int, steps: int, tau: float):
    """name -> function(source prompt, target prompt) -> the interventions and the prompt of the edited row."""
    text_sites = " ".join(s.label for s in probe.sites if s.carries_text)
    out = {}
    for k in range(1, len(top) + 1):
        spec = " ".join(top[:k])
        out[f"localized top-{k} ({spec}) from t_s={t_start}"] = (
            lambda s, t, spec=spec: (s, (edit_intervention(probe, t, spec, t_start),)))
    out[f"all text sites from t_s={t_start}"] = lambda s, t: (s, (edit_intervention(probe, t, text_sites, t_start),))
    out["prompt swap (target prompt, same noise)"] = lambda s, t: (t, ())
    cut = max(1, int(round(tau * steps)))
    cross = " ".join(s.label for s in probe.sites if s.kind == "cross" and s.kv[:1] == ("to_k",)) or "cross:all"
    out[f"prompt-to-prompt (cross maps of the source for steps 0-{cut - 1})"] = (
        lambda s, t: (t, (ReplaceAttention(source=s, sites=cross, steps=f":{cut}"),)))
    return out


def compare(probe, pairs, *, top: Sequence[str], t_start: int, steps: int = 25, seeds: Sequence[int] = (0,),
            tau: float = 0.8, box=None, guidance=None, progress=None) -> list[dict]:
    """One row per method: means of the metrics over ``pairs`` x ``seeds`` and the wall time per edit.

    ``pairs``: :class:`~diffprobe.bench.PromptPair` (source/target prompt and text). ``box``: a function
    pair -> (x0, y0, x1, y1) or one box for all (default for the glyph model: the renderer's text box)."""
    from .metrics.ocr import read_texts
    from .metrics.text import char_f1, exact_match

    if box is None and probe.name == "glyph":
        box = lambda p: glyph_text_box([p.source_text, p.target_text])  # noqa: E731
    cells = [(p, s) for p in pairs for s in seeds]
    t0 = time.perf_counter()
    sources = probe.run([Variant(p.source_prompt, (), s) for p, s in cells], steps=steps, guidance=guidance).images
    base_time = (time.perf_counter() - t0) / len(cells)
    rows = [dict(method="source (no edit)", seconds=base_time, **_scores(sources, sources, cells, box, read_texts,
                                                                         char_f1, exact_match))]
    for name, make in _methods(probe, top, t_start, steps, tau).items():
        if progress:
            progress(name)
        variants = [Variant(*make(p.source_prompt, p.target_prompt), s) for p, s in cells]
        t0 = time.perf_counter()
        images = probe.run(variants, steps=steps, guidance=guidance).images
        seconds = (time.perf_counter() - t0) / len(cells)
        rows.append(dict(method=name, seconds=seconds, **_scores(images, sources, cells, box, read_texts, char_f1,
                                                                 exact_match)))
    return rows


def time_methods(probe, pairs, *, top: Sequence[str], t_start: int, steps: int = 25, seed: int = 0,
                 tau: float = 0.8, repeats: int = 3, guidance=None) -> dict[str, float]:
    """Seconds per edit of each method: batches over ``pairs``, the methods interleaved ``repeats`` times, medians
    (so the load of a shared machine hits every method alike). Prompt-to-prompt's batch holds the source rows too."""
    import statistics

    methods = _methods(probe, top, t_start, steps, tau)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, make in methods.items():
            variants = [Variant(*make(p.source_prompt, p.target_prompt), seed) for p in pairs]
            t0 = time.perf_counter()
            probe.run(variants, steps=steps, guidance=guidance)
            times[name].append((time.perf_counter() - t0) / len(pairs))
    return {name: statistics.median(v) for name, v in times.items()}


def _scores(images, sources, cells, box, read_texts, char_f1, exact_match) -> dict[str, float]:
    texts = read_texts(images)
    per = []
    for img, src, text, (p, _) in zip(images, sources, texts, cells):
        b = box(p) if callable(box) else box
        per.append(dict(f1_new=char_f1(text, p.target_text), exact_new=float(exact_match(text, p.target_text)),
                        f1_old=char_f1(text, p.source_text), exact_old=float(exact_match(text, p.source_text)),
                        **image_scores(img, src, b)))
    keys = per[0].keys()
    return {k: float(np.mean([min(r[k], 100.0) if k.startswith("psnr") else r[k] for r in per])) for k in keys}


#: the editing comparison's columns: (row key, header)
EDIT_COLUMNS = [("method", "method"), ("f1_new", "OCR F1 new"), ("exact_new", "exact new"), ("f1_old", "OCR F1 old"),
                ("exact_old", "exact old"), ("ssim", "SSIM"), ("psnr", "PSNR"), ("mse", "MSE"),
                ("ssim_outside", "SSIM outside"), ("psnr_outside", "PSNR outside"), ("mse_outside", "MSE outside"),
                ("seconds", "s / edit")]


def markdown_table(rows: list[dict], columns: Sequence[tuple[str, str]] = EDIT_COLUMNS) -> str:
    """A comparison as a markdown table: the ``columns`` (row key, header) the rows have; the first column is the
    method's name, PSNR and MSE get one decimal, the rest two (PSNR capped at 100 dB for identical images)."""
    cols = [(k, h) for k, h in columns if k in rows[0]]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r[k] if k == "method" else (f"{r[k]:.1f}" if k.startswith(("psnr", "mse")) else f"{r[k]:.2f}")
                 for k, _ in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_outputs(result: EditResult, out) -> Path:
    """DIR/source.png, DIR/edited.png and DIR/edit.html (both images with the OCR text when Tesseract is there)."""
    from html import escape

    from PIL import Image

    from .metrics.ocr import engine_unavailable_reason, read_texts
    from .report.html import _tile, write_page

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.source).save(out / "source.png")
    Image.fromarray(result.edited).save(out / "edited.png")
    texts = read_texts(np.stack([result.source, result.edited])) if engine_unavailable_reason() is None else [None] * 2
    tiles = [_tile(result.source, "source", texts[0], result.prompt),
             _tile(result.edited, "edited", texts[1], result.target_prompt,
                   f"sites {' '.join(result.sites)} from t_s={result.t_start}")]
    facts = f"seed {result.seed}, {result.steps} steps"
    body = (f"<header><h1>diffprobe edit</h1></header><section><p class='note'>{escape(facts)}</p>"
            f"<div class='grid'>{''.join(tiles)}</div></section>")
    return write_page(out / "edit.html", "diffprobe edit", body, [])


def run_comparison(probe, out, *, n: int, top: Sequence[str], t_start: int, steps: int, seeds=(0,), tau: float = 0.8,
                   pair_seed: int = 0, progress=None) -> Path:
    """:func:`compare` on ``n`` glyph pairs; writes DIR/comparison.md and DIR/comparison.json."""
    import json
    import os

    from .glyph_bench import glyph_pairs

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(probe, glyph_pairs(n, pair_seed), top=top, t_start=t_start, steps=steps, seeds=seeds, tau=tau,
                   progress=progress)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (f"{probe.name}, {n} pairs (glyph_pairs({n}, {pair_seed})) x seeds {list(seeds)}, {steps} steps, "
            f"t_s={t_start}, prompt-to-prompt tau={tau}; {torch.get_num_threads()} torch thread(s), "
            f"load average {load:.1f} at the end")
    (out / "comparison.json").write_text(json.dumps({"note": note, "rows": rows}, indent=1, allow_nan=True))
    md = out / "comparison.md"
    md.write_text(markdown_table(rows) + f"\n\n{note}\n", encoding="utf-8")
    return md
