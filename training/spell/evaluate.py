"""Evaluate a spelling pipeline (`spell`'s IFPipeline or `glyph-mmdit`'s SD3 pipeline): generate signs for held-out and training words, read them with diffprobe's OCR.

    python -m training.spell.evaluate [--model diffprobe/zoo/spell/weights] [--n 16] [--samples 1]
        [--steps 25] [--guidance 4] [--font mono] [--max-letters 3] [--out results.json] [--grid grid.png]
    python -m training.spell.evaluate --model runs/spell --raw ...    # a run's ckpt.pt, its raw (not EMA) weights

Splits: ``heldout`` = the first N of ``data.eval_heldout()`` (words never trained), ``train`` = the first N of
``data.eval_train()``, ``combos`` = training words on the held-out template x font combinations (needs a font
in the prompt, so only with --font or for the combos' own fonts). Templates are cycled over the words.
``--max-letters N`` keeps words of 3 to N letters (a curriculum stage's gate: ``--font mono --max-letters 3``).
Scores: exact match and character F1 (diffprobe.metrics: ``read_texts``, ``exact_match``, ``char_f1``, and the
set F1 2 mean(P) mean(R) / (mean P + mean R)), colour adherence (the nearest template by median background and
text colour is the prompted one). Generation runs in fp32 by default: bf16 autocast is ~30x slower than fp32
on CPUs without native bf16 (AVX2-only EPYC here).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from PIL import Image

from diffprobe.errors import SpecError
from diffprobe.zoo import spell_data as data
from training.glyph.evaluate import save_grid

DEFAULT_MODEL = pathlib.Path("diffprobe/zoo/spell/weights")


def load(model_dir=None, raw: bool = False):
    """The pipeline folder's pipeline in fp32; ``raw``: ``model_dir`` is a run folder (``ckpt.pt`` and
    ``pipeline/``), whose raw weights replace the EMA ones (as ``training.diagnose --raw``)."""
    if raw:
        from training.diagnose import _pipeline

        return _pipeline(pathlib.Path(model_dir), raw=True)
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(model_dir or DEFAULT_MODEL))  # fp32
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call_kwargs(pipe) -> dict:
    """The pipeline-specific settings: IF keeps prompts verbatim; glyph-mmdit (SD3) gets its one T5 token."""
    if type(pipe).__name__.startswith("IF"):
        return {"clean_caption": False}
    from diffprobe.zoo.glyph_mmdit import CALL

    return dict(CALL)


def generate(pipe, prompts, seeds, steps=25, guidance=4.0, batch=16, bf16=False):
    import contextlib

    import torch

    images = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i:i + batch]]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx, torch.no_grad():
            images += pipe(prompts[i:i + batch], height=data.HEIGHT, width=data.WIDTH, num_inference_steps=steps,
                           guidance_scale=guidance, generator=gens, **_call_kwargs(pipe)).images
    return images


def colours(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(background, text) median RGB of the interior: Otsu on luminance, text = minority class."""
    from skimage.filters import threshold_otsu

    a = np.asarray(img.convert("RGB"), dtype=np.float64)[3:-3, 5:-5]
    y = 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]
    if y.max() - y.min() < 1e-3:
        m = np.median(a.reshape(-1, 3), axis=0)
        return m, m
    bright = y > threshold_otsu(y)
    ink = bright if bright.mean() < 0.5 else ~bright
    bg = np.median(a[~ink], axis=0) if (~ink).any() else np.median(a.reshape(-1, 3), axis=0)
    fg = np.median(a[ink], axis=0) if ink.any() else bg
    return bg, fg


def nearest_template(img: Image.Image) -> int:
    bg, fg = colours(img)
    d = [np.linalg.norm(bg - np.array(t.background)) + np.linalg.norm(fg - np.array(t.text)) for t in data.TEMPLATES]
    return int(np.argmin(d))


def items_for(split: str, n: int, font: str | None, max_letters: int = data.MAX_LETTERS):
    """(template, word, font-in-prompt) triples of a split, templates cycled, held-out combos avoided."""
    if split == "combos":
        words = data.eval_train(max_letters)
        combos = sorted(data.HELD_OUT_COMBOS)
        return [(combos[i % len(combos)][0], words[i], combos[i % len(combos)][1]) for i in range(n)]
    words = data.eval_heldout(max_letters) if split == "heldout" else data.eval_train(max_letters)
    if n > len(words):
        raise SpecError(f"{split}: only {len(words)} evaluation words of 3-{max_letters} letters, asked for --n {n}; "
                        f"choose --n <= {len(words)} or a larger --max-letters.", field="n")
    out, i, t = [], 0, 0
    while len(out) < n:
        if font is None or (t % len(data.TEMPLATES), font) not in data.HELD_OUT_COMBOS:
            out.append((t % len(data.TEMPLATES), words[i], font))
            i += 1
        t += 1
    return out


def score(images, items) -> dict:
    from diffprobe.metrics import char_f1, exact_match, read_texts
    from diffprobe.metrics.text import char_precision_recall, set_f1

    texts = read_texts(data.to_array(images), workers=1)
    rows, P, R = [], [], []
    for img, (t, w, f), txt in zip(images, items, texts):
        p, r = char_precision_recall(txt, w)
        P.append(p), R.append(r)
        rows.append(dict(template=data.TEMPLATES[t].name, font=f, word=w, ocr=txt, exact=exact_match(txt, w),
                         f1=char_f1(txt, w), colour_ok=nearest_template(img) == t))
    n = max(1, len(rows))
    return dict(n=len(rows), exact=sum(r["exact"] for r in rows) / n, char_f1=set_f1(P, R) if rows else 0.0,
                mean_sample_f1=float(np.mean([r["f1"] for r in rows])) if rows else 0.0,
                colour=sum(r["colour_ok"] for r in rows) / n, samples=rows)


def evaluate(model_dir=None, split="heldout", n=16, samples=1, steps=25, guidance=4.0, font=None, seed=0, batch=16,
             bf16=False, grid=None, pipe=None, max_letters=data.MAX_LETTERS) -> dict:
    pipe = pipe or load(model_dir)
    items = [it for it in items_for(split, n, font, max_letters) for _ in range(samples)]
    prompts = [data.prompt(t, w, f) for t, w, f in items]
    seeds = [seed * 100003 + i for i in range(len(items))]
    t0, c0 = time.time(), time.process_time()
    images = generate(pipe, prompts, seeds, steps, guidance, batch, bf16)
    gen_s, gen_cpu = time.time() - t0, time.process_time() - c0
    res = score(images, items)
    res.update(split=split, font=font if split != "combos" else "per combo", samples_per_prompt=samples,
               max_letters=max_letters, steps=steps, guidance=guidance, seed=seed, generate_seconds=round(gen_s, 1), generate_cpu_seconds=round(gen_cpu, 1), model=str(model_dir or DEFAULT_MODEL))
    if grid:
        save_grid(images, grid, cols=4)
    return res


def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=pathlib.Path, default=None, help=f"pipeline folder (default {DEFAULT_MODEL})")
    ap.add_argument("--raw", action="store_true", help="--model is a run folder: its ckpt.pt's raw weights")
    ap.add_argument("--splits", default="heldout,train", help="comma list of heldout, train, combos")
    ap.add_argument("--n", type=int, default=16, help="words per split")
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--font", default=None, choices=[None, *data.FONT_NAMES], help="name a font in the prompt")
    ap.add_argument("--max-letters", type=int, default=data.MAX_LETTERS, choices=range(3, data.MAX_LETTERS + 1),
                    help="only words of 3 to this many letters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (slow on CPUs without native bf16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=pathlib.Path, default=None)
    ap.add_argument("--grid", type=pathlib.Path, default=None, help="PNG grid per split: NAME-<split>.png")
    a = ap.parse_args(argv)
    if a.raw and a.model is None:
        ap.error("--raw reads a run folder's ckpt.pt: give it with --model (e.g. --model runs/spell)")
    torch.set_num_threads(a.threads)
    pipe = load(a.model, a.raw)
    allres = {}
    for split in a.splits.split(","):
        grid = a.grid.with_name(f"{a.grid.stem}-{split}{a.grid.suffix}") if a.grid else None
        res = evaluate(a.model, split, a.n, a.samples, a.steps, a.guidance, a.font, a.seed, a.batch, a.bf16, grid, pipe,
                       a.max_letters)
        allres[split] = res
        print(json.dumps({k: v for k, v in res.items() if k != "samples"}), flush=True)
        print(f"  {split} readings:", ", ".join(f'{s["word"]}->{s["ocr"]!r}' for s in res["samples"]), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(allres, indent=1))


if __name__ == "__main__":
    main()
