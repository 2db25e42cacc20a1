"""Evaluate a glyph pipeline: generate prompts x samples, read each image with diffprobe's OCR, score it.

    python -m training.glyph.evaluate [--model DIR] [--split heldout|train|all] [--samples 2]
        [--steps 25] [--guidance 4] [--ocr tesseract|easyocr] [--out results.json] [--grid grid.png]

Reading and scoring are diffprobe's own (``diffprobe.metrics``), so the model card and the sweeps use one
instrument: ``read_texts`` (the OCR that reads every clean rendering of every template x word exactly),
``exact_match``, ``char_precision_recall`` with the set F1 ``set_f1`` = 2 mean(P) mean(R) / (mean(P) + mean(R))
(``char_f1``) and the per-sample mean F1, plus the paper's own definitions (``paper_set_f1``, ``paper_acc``).
Colour-template adherence is this script's own check: the nearest template by background + text colour
(medians over an Otsu text mask of the sign's interior) is the prompted one.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from PIL import Image

from diffprobe.zoo.glyph import data

BORDER = 4  # frame / underline live in the outer 4 pixels (the colour check looks inside them)


def _luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


def text_mask(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(interior RGB array, boolean text mask) of an image: Otsu on luminance, text = minority class."""
    from skimage.filters import threshold_otsu

    a = np.asarray(img.convert("RGB"))
    inner = a[BORDER:-BORDER, BORDER:-BORDER]
    y = _luma(inner)
    if float(y.max() - y.min()) < 1e-3:
        return inner, np.zeros(y.shape, dtype=bool)
    th = threshold_otsu(y)
    bright = y > th
    mask = bright if bright.mean() < 0.5 else ~bright
    return inner, _clean(mask)


def _clean(mask: np.ndarray, min_size: int = 4) -> np.ndarray:
    """Drop specks: connected components smaller than ``min_size`` pixels (e.g. frame corners left by the crop)."""
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= min_size
    return keep[lab]


def ocr(img: Image.Image, engine: str = "tesseract") -> str:
    """diffprobe's reading of a generated sign (``diffprobe.metrics.read_text``): lower-case, words space-joined."""
    from diffprobe.metrics import read_text

    return read_text(np.asarray(img.convert("RGB")), engine=engine)


def colours(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(background RGB, text RGB) medians of a sign's interior."""
    inner, mask = text_mask(img)
    bg = np.median(inner[~mask], axis=0) if (~mask).any() else np.median(inner.reshape(-1, 3), axis=0)
    fg = np.median(inner[mask], axis=0) if mask.any() else bg
    return bg, fg


def nearest_template(img: Image.Image) -> int:
    bg, fg = colours(img)
    d = [np.linalg.norm(bg - np.array(t.background)) + np.linalg.norm(fg - np.array(t.text)) for t in data.TEMPLATES]
    return int(np.argmin(d))


def split_pairs(split: str) -> list[tuple[int, int]]:
    if split == "heldout":
        return data.held_out_pairs()
    if split == "train":
        return data.train_pairs()
    if split == "all":
        return [(t, w) for t in range(len(data.TEMPLATES)) for w in range(len(data.WORDS))]
    raise ValueError(split)


def load(model_dir=None):
    """The pipeline at ``model_dir`` (default: the shipped weights), fp32, progress bar off."""
    from diffusers import DiffusionPipeline

    from diffprobe.zoo.glyph import default_model_path

    pipe = DiffusionPipeline.from_pretrained(str(model_dir or default_model_path()))  # fp32 by default
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts, seeds, steps=25, guidance=4.0, batch=16, bf16=True):
    """Generate one image per (prompt, seed); the seed fixes that image's initial noise."""
    import contextlib

    import torch

    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx, torch.no_grad():
            out = pipe(
                prompts[i : i + batch], height=data.HEIGHT, width=data.WIDTH, num_inference_steps=steps,
                guidance_scale=guidance, generator=gens, clean_caption=False,
            ).images
        images += out
    return images


def score(images, pairs, engine: str = "tesseract") -> dict:
    """Read ``images`` (PIL) with diffprobe's OCR and score them against the prompted words of ``pairs``."""
    from diffprobe.metrics import (
        char_f1, char_precision_recall, exact_match, paper_accuracy, paper_precision_recall, paper_set_f1,
        read_texts, set_f1,
    )

    images = list(images)
    arrays = np.stack([np.asarray(im.convert("RGB")) for im in images]) if images else np.zeros((0, 1, 1, 3), np.uint8)
    readings = read_texts(arrays, engine=engine)
    rows, P, R, PP, PR = [], [], [], [], []
    for img, (ti, wi), text in zip(images, pairs, readings):
        word = data.WORDS[wi].lower()
        p, r = char_precision_recall(text, word)
        pp, pr = paper_precision_recall(text, word)
        P.append(p), R.append(r), PP.append(pp), PR.append(pr)
        rows.append(dict(template=ti, word=data.WORDS[wi], ocr=text, exact=exact_match(text, word),
                         f1=char_f1(text, word), paper_acc=bool(paper_accuracy(text, word)),
                         colour_ok=nearest_template(img) == ti))
    n = max(1, len(rows))
    return dict(
        n=len(rows),
        ocr_engine=engine,
        exact=sum(r["exact"] for r in rows) / n,
        char_f1=set_f1(P, R) if rows else 0.0,
        mean_sample_f1=float(np.mean([r["f1"] for r in rows])) if rows else 0.0,
        paper_f1=paper_set_f1(PP, PR) if rows else 0.0,
        paper_acc=sum(r["paper_acc"] for r in rows) / n,
        colour=sum(r["colour_ok"] for r in rows) / n,
        samples=rows,
    )


def evaluate(model_dir=None, split="heldout", samples=2, steps=25, guidance=4.0, seed=0, batch=16, bf16=True,
             grid=None, pipe=None, engine="tesseract") -> dict:
    pipe = pipe or load(model_dir)
    pairs = [p for p in split_pairs(split) for _ in range(samples)]
    prompts = [data.prompt(t, data.WORDS[w]) for t, w in pairs]
    seeds = [seed * 100003 + i for i in range(len(pairs))]
    t0 = time.time()
    images = generate(pipe, prompts, seeds, steps=steps, guidance=guidance, batch=batch, bf16=bf16)
    gen_s = time.time() - t0
    res = score(images, pairs, engine=engine)
    res.update(split=split, samples_per_prompt=samples, steps=steps, guidance=guidance, seed=seed,
               generate_seconds=round(gen_s, 1), model=str(model_dir))
    if grid:
        save_grid(images, grid)
    return res


def save_grid(images, path, cols=8, scale=2):
    w, h = images[0].size
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (cols * w, rows * h), (128, 128, 128))
    for i, im in enumerate(images):
        g.paste(im, ((i % cols) * w, (i // cols) * h))
    g.resize((g.width * scale, g.height * scale), Image.NEAREST).save(path)


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, default=None, help="pipeline directory (default: shipped)")
    ap.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    ap.add_argument("--ocr", default="tesseract", choices=["tesseract", "easyocr"], help="OCR engine (diffprobe.metrics)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    ap.add_argument("--grid", type=pathlib.Path, default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = evaluate(a.model, a.split, a.samples, a.steps, a.guidance, a.seed, a.batch, not a.fp32, a.grid, engine=a.ocr)
    summary = {k: v for k, v in res.items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    wrong = [f'{s["word"]}->{s["ocr"]!r}' for s in res["samples"] if not s["exact"]]
    print("misread:", ", ".join(wrong) or "none")
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
