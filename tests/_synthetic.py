"""Synthetic sweep results built through the real schema (spec, layout, store, ``assemble``), for plot and report tests.

No model runs: metrics are drawn so that one site clearly localizes the text (high ``ocr_f1_target`` that fades
with later ``t_start``), and images are small drawings of the words, so a report built from them looks real.
"""
from __future__ import annotations

import json

import numpy as np
import xarray as xr
from PIL import Image, ImageDraw, ImageFont

SITE_NAMES = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.0.attentions.2.transformer_blocks.1.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.1.transformer_blocks.0.ff",
)
SITE_KINDS = ("cross", "self", "cross", "cross", "mlp")
PAIRS = (
    ("a sign that says 'CAT'", "a sign that says 'DOG'", "cat", "dog"),
    ("<script>alert(1)</script> on a poster", "a poster that says 'SUN'", "<script>alert(1)</script>", "sun"),
    ("a mug with 'TEA'", "a mug with 'ZEN'", "tea", "zen"),
)


def _draw(word: str, size: int, hue: int) -> np.ndarray:
    img = Image.new("RGB", (size, size), (235, 225 - hue, 200 + hue // 2))
    font = ImageFont.load_default(size=max(8, size // 5))
    draw = ImageDraw.Draw(img)
    draw.rectangle((size // 8, size // 3, size - size // 8, 2 * size // 3), fill=(250, 250, 245), outline=(60, 60, 60))
    draw.text((size // 2, size // 2), word.upper()[:8], fill=(20, 20, 20), font=font, anchor="mm")
    return np.asarray(img, dtype=np.uint8)


def _sites(n_sites: int) -> tuple:
    from diffprobe.sites import Site

    return tuple(
        Site(index=i, kind=SITE_KINDS[i % len(SITE_KINDS)], name=SITE_NAMES[i % len(SITE_NAMES)],
             block=SITE_NAMES[i % len(SITE_NAMES)].split("_")[0], heads=4, head_dim=8, kv=("to_k", "to_v"),
             kv_params=512)
        for i in range(n_sites)
    )


def _spec(pairs, **fields):
    from diffprobe.bench import PromptPair
    from diffprobe.spec import Experiment

    return Experiment(
        model="tiny-glyph", intervention="patch", steps=8,
        pairs=tuple(PromptPair(p[0], p[1], p[2], p[3]) for p in pairs),
        metrics=("ocr_f1_target", "ocr_f1_source", "exact_target", "ssim"), **fields,
    )


def _store(spec, src, tgt, rng):
    """A memory store holding each pair's baselines, written through the runner's own store methods."""
    from diffprobe.results import Store

    store = Store(None, spec)
    jobs = [(p, s) for p in range(len(spec.pairs)) for s in spec.seeds]
    n = len(jobs)
    base = lambda v: {m: np.full(n, v, float) for m in spec.metrics} | {"ocr_text": np.array(["x"] * n)}  # noqa: E731
    store.write_baseline(0, {
        "pair": np.array([p for p, _ in jobs]), "seed": np.array([s for _, s in jobs]),
        "source_image": np.stack([src[p, i] for p, i in _positions(spec, jobs)]),
        "target_image": np.stack([tgt[p, i] for p, i in _positions(spec, jobs)]),
        "source": base(0.0), "target": base(1.0),
    })
    return store


def _positions(spec, jobs):
    return [(p, list(spec.seeds).index(s)) for p, s in jobs]


def _write_cells(store, spec, groups: int, f1, ssim, images, done, texts) -> None:
    """Cell batches through ``Store.write_cells``, one per pair, leaving out the cells ``done`` marks unfinished."""
    from diffprobe.runner import Cell

    for p in range(len(spec.pairs)):
        cells, keep = [], []
        for g in range(groups):
            for ti, t in enumerate(spec.t_starts):
                for si, s in enumerate(spec.seeds):
                    if done[p, g, ti, si]:
                        cells.append(Cell(p, g, t, s))
                        keep.append((p, g, ti, si))
        pick = tuple(np.array(k) for k in zip(*keep))
        metrics = {"ocr_f1_target": f1[pick], "ocr_f1_source": 1 - f1[pick],
                   "exact_target": (f1[pick] > 0.5).astype(float), "ssim": ssim[pick],
                   "ocr_text": texts[pick].astype(str)}
        store.write_cells(p, {"cells": cells, "images": images[pick], "metrics": metrics})


def make_results(
    n_pairs: int = 3, n_sites: int = 5, t_starts=(0, 2, 4), seeds=(0, 1), size: int = 48, rng_seed: int = 0
) -> xr.Dataset:
    """A finished-looking sweep: site 2 localizes the text; one cell is unfinished (NaN, done=False)."""
    from diffprobe.results import Layout, assemble

    rng = np.random.default_rng(rng_seed)
    pairs = [PAIRS[i % len(PAIRS)] for i in range(n_pairs)]
    shape = (n_pairs, n_sites, len(t_starts), len(seeds))
    strength = np.full(n_sites, 0.1)
    strength[min(2, n_sites - 1)] = 0.9
    strength[min(3, n_sites - 1)] = max(strength[min(3, n_sites - 1)], 0.5)
    fade = 1.0 - np.arange(len(t_starts)) / (len(t_starts) + 1)
    f1 = np.clip(strength[None, :, None, None] * fade[None, None, :, None] + rng.normal(0, 0.05, shape), 0, 1)
    ssim = np.clip(1 - 0.4 * f1 + rng.normal(0, 0.02, shape), 0, 1)
    done = np.ones(shape, dtype=bool)
    done[-1, 0, -1, -1] = False
    src = np.stack([[_draw(p[2], size, 10 * s) for s in range(len(seeds))] for p in pairs])
    tgt = np.stack([[_draw(p[3], size, 10 * s) for s in range(len(seeds))] for p in pairs])
    pick = (f1 > 0.5)[..., None, None, None]
    patched = np.where(pick, tgt[:, None, None], src[:, None, None]).astype(np.uint8)
    ocr = np.where(f1 > 0.5, np.array([p[3] for p in pairs])[:, None, None, None],
                   np.array([p[2] for p in pairs])[:, None, None, None])
    spec = _spec(pairs, sites=tuple(f"cross:{i}" for i in range(n_sites)), t_starts=tuple(t_starts),
                 seeds=tuple(seeds))
    layout = Layout(_sites(n_sites), tuple((i,) for i in range(n_sites)))
    store = _store(spec, src, tgt, rng)
    _write_cells(store, spec, n_sites, f1, ssim, patched, done, ocr)
    ds = assemble(spec, layout, store)
    ds.attrs["versions"] = json.dumps({"diffprobe": "0.1.0", "torch": "2.13.0", "diffusers": "0.35.0",
                                       "nnsight": "0.8.1"})
    return ds


def make_counts(counts=(1, 2, 3, 5), n_pairs: int = 3, seeds=(0, 1), rng_seed: int = 0) -> xr.Dataset:
    """A layer-count sweep: more injected sites raise text alignment and lower image alignment."""
    from diffprobe.results import Layout, assemble

    rng = np.random.default_rng(rng_seed)
    pairs = [PAIRS[i % len(PAIRS)] for i in range(n_pairs)]
    c = np.asarray(counts, dtype=float)[None, :, None, None]
    shape = (n_pairs, len(counts), 1, len(seeds))
    f1 = np.clip(1 - 0.8 / c + rng.normal(0, 0.03, shape), 0, 1)
    ssim = np.clip(1 - 0.08 * c + rng.normal(0, 0.02, shape), 0, 1)
    n_sites = max(counts)
    spec = _spec(pairs, sites=tuple(f"cross:{i}" for i in range(n_sites)), grouping="cumulative",
                 counts=tuple(counts), seeds=tuple(seeds))
    layout = Layout(_sites(n_sites), tuple(tuple(range(k)) for k in counts))
    blank = np.zeros((1, 1, 3), np.uint8)
    src = np.broadcast_to(blank, (n_pairs, len(seeds), 1, 1, 3))
    store = _store(spec, src, src, rng)
    images = np.zeros(shape + (1, 1, 3), np.uint8)
    _write_cells(store, spec, len(counts), f1, ssim, images, np.ones(shape, bool), np.full(shape, "x"))
    return assemble(spec, layout, store)
