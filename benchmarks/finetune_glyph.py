"""The LoRA comparison of docs/applications.md: fine-tune the embedded glyph model where it is weakest.

    OMP_NUM_THREADS=1 python benchmarks/finetune_glyph.py --out runs/finetune_compare [--steps 150] [--batch 4]

Same data (``glyph:heldout``: the 32 template x word combinations glyph never saw in training, rendered by its own
renderer), steps, batch and seed for every variant: LoRA (peft) on the top localized sites (``cross:9 cross:10``,
docs/science.md), on all 12 cross-attention sites, on random other sites with the same LoRA parameter count
(``diffprobe.finetune.random_sites_like``), and a full fine-tune of the UNet. Each variant is evaluated on held-out
combinations (the 7 the model card lists as failing plus the first others of the split, 2 seeds each) with the
pipeline's guidance 4 and 25 steps, read and scored by ``training.glyph.evaluate.score`` (the model card's instrument:
OCR exact, character F1, colours followed); diversity is the mean absolute pixel difference (0-255) between the
two seeds' images of a combination. Resumes: a variant with ``eval.json`` is skipped, a half-trained one continues.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch
from PIL import Image

import diffprobe as dp
from diffprobe.lora import FinetuneSpec, finetune, random_sites_like
from diffprobe.zoo.glyph import data
from training.glyph.evaluate import score

FAILING = ("BOOK", "CAT", "SNOW", "TAXI", "BANK", "JAZZ", "WAVE")  # docs/model-card.md: wrong in both samples
TOP = "cross:9 cross:10"


def eval_pairs(n: int) -> list[tuple[int, int]]:
    held = data.held_out_pairs()
    failing = [p for p in held if data.WORDS[p[1]] in FAILING]
    return (failing + [p for p in held if p not in failing])[:n]


def evaluate(probe, pairs, seeds=(0, 1), steps=25, guidance=4.0) -> dict:
    variants = [dp.Variant(data.prompt(t, data.WORDS[w]), (), s) for t, w in pairs for s in seeds]
    t0 = time.perf_counter()
    images = probe.run(variants, steps=steps, guidance=guidance, height=data.HEIGHT, width=data.WIDTH).images
    gen_s = time.perf_counter() - t0
    res = score([Image.fromarray(a) for a in images], [p for p in pairs for _ in seeds])
    per = images.reshape(len(pairs), len(seeds), *images.shape[1:]).astype(np.float64)
    dist = [np.abs(per[:, i] - per[:, j]).mean() for i in range(len(seeds)) for j in range(i + 1, len(seeds))]
    failing = [s for s in res["samples"] if s["word"] in FAILING]
    return dict(exact=res["exact"], char_f1=res["char_f1"], colour=res["colour"],
                exact_failing=float(np.mean([s["exact"] for s in failing])) if failing else None,
                diversity=float(np.mean(dist)) if dist else None, generate_seconds=round(gen_s, 1),
                readings=[f'{s["word"]}->{s["ocr"]}' for s in res["samples"]])


def saved_probe(folder: pathlib.Path):
    """A variant's model as saved: the base model, its LoRA adapters, or its full fine-tune's pipeline folder."""
    if (folder / "pipeline").is_dir():
        return dp.load(str(folder / "pipeline"), device="cpu", dtype="float32")
    lora = folder if (folder / "adapter_config.json").exists() else None
    return dp.load("glyph", lora=lora, device="cpu", dtype="float32")


def forgetting(out: pathlib.Path, variants, n: int) -> None:
    """Did fine-tuning on the held-out combinations hurt the trained ones? ``n`` of them (spread over the split), 1 seed."""
    pairs = data.train_pairs()[:: max(1, len(data.train_pairs()) // n)][:n]
    for name in variants:
        folder = out / name
        if (folder / "train_eval.json").exists() or not (folder / "eval.json").exists():
            continue
        row = dict(variant=name, **evaluate(saved_probe(folder), pairs, seeds=(0,)))
        (folder / "train_eval.json").write_text(json.dumps(row, indent=1))
        print(json.dumps({k: v for k, v in row.items() if k != "readings"}), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/finetune_compare"))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3, help="LoRA learning rate")
    ap.add_argument("--full-lr", type=float, default=1e-4, help="full fine-tune learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=16, help="held-out combinations evaluated (failing ones first)")
    ap.add_argument("--variants", default="none,top,cross_all,random,full")
    ap.add_argument("--forgetting", type=int, default=0, metavar="N",
                    help="instead: evaluate N trained combinations (1 seed) on each saved variant -> train_eval.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.forgetting:
        return forgetting(a.out, a.variants.split(","), a.forgetting)
    pairs = eval_pairs(a.pairs)
    base = dict(steps=a.steps, batch=a.batch, lr=a.lr, seed=a.seed, noisy_frac=0.5, noisy_from=0.9, ckpt_every=50)
    for name in a.variants.split(","):
        folder = a.out / name
        if (folder / "eval.json").exists():
            print(name, "done", flush=True)
            continue
        probe = dp.load("glyph", device="cpu", dtype="float32")
        row = dict(variant=name)
        if name != "none":
            spec = {"top": dict(sites=TOP), "cross_all": dict(sites="cross:all"),
                    "random": dict(sites=random_sites_like(probe, TOP, seed=a.seed)),
                    "full": dict(sites=None, mode="full", lr=a.full_lr)}[name]
            result = finetune(probe, "glyph:heldout", folder, FinetuneSpec(**dict(base, **spec)), progress=True)
            probe = result.probe
            row.update(sites=spec.get("sites"), trainable_params=result.trainable_params, train_seconds=round(
                result.seconds, 1), final_loss=float(np.mean(result.losses[-20:])))
        else:
            row.update(sites=None, trainable_params=0, train_seconds=0.0)
        row.update(evaluate(probe, pairs))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "eval.json").write_text(json.dumps(row, indent=1))
        print(json.dumps({k: v for k, v in row.items() if k != "readings"}), flush=True)


if __name__ == "__main__":
    main()
