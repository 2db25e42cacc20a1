"""Synthetic sweep results in the experiments runner's exact layout, for the plot and report tests.

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


def make_results(
    n_pairs: int = 3, n_sites: int = 5, t_starts=(0, 2, 4), seeds=(0, 1), size: int = 48, rng_seed: int = 0
) -> xr.Dataset:
    """A finished-looking sweep: site 2 localizes the text; one cell is unfinished (NaN, done=False)."""
    rng = np.random.default_rng(rng_seed)
    pairs = [PAIRS[i % len(PAIRS)] for i in range(n_pairs)]
    shape = (n_pairs, n_sites, len(t_starts), len(seeds))
    strength = np.full(n_sites, 0.1)
    strength[min(2, n_sites - 1)] = 0.9
    strength[min(3, n_sites - 1)] = max(strength[min(3, n_sites - 1)], 0.5)
    fade = 1.0 - np.arange(len(t_starts)) / (len(t_starts) + 1)
    f1 = np.clip(strength[None, :, None, None] * fade[None, None, :, None] + rng.normal(0, 0.05, shape), 0, 1)
    done = np.ones(shape, dtype=bool)
    done[-1, 0, -1, -1] = False
    dims = ("pair", "site", "t_start", "seed")
    metric = lambda a: (dims, np.where(done, a, np.nan))  # noqa: E731
    src = np.stack([[_draw(p[2], size, 10 * s) for s in range(len(seeds))] for p in pairs])
    tgt = np.stack([[_draw(p[3], size, 10 * s) for s in range(len(seeds))] for p in pairs])
    pick = (f1 > 0.5)[..., None, None, None]
    patched = np.where(pick, tgt[:, None, None], src[:, None, None]).astype(np.uint8)
    ocr = np.where(f1 > 0.5, np.array([p[3] for p in pairs])[:, None, None, None],
                   np.array([p[2] for p in pairs])[:, None, None, None])
    spec = {"model": "tiny-glyph", "intervention": "patch", "pairs": [list(p[:2]) for p in pairs],
            "sites": "kind=cross", "t_start": list(t_starts), "seeds": list(seeds), "steps": 8}
    return xr.Dataset(
        {
            "ocr_f1_target": metric(f1),
            "ocr_f1_source": metric(1 - f1),
            "exact_target": metric((f1 > 0.5).astype(float)),
            "ssim": metric(np.clip(1 - 0.4 * f1 + rng.normal(0, 0.02, shape), 0, 1)),
            "ocr_text": (dims, np.where(done, ocr, "").astype(str)),
            "done": (dims, done),
            "source_image": (("pair", "seed", "y", "x", "rgb"), src),
            "target_image": (("pair", "seed", "y", "x", "rgb"), tgt),
            "patched_image": (dims + ("y", "x", "rgb"), patched),
            "source_ocr_text": (("pair", "seed"), np.array([[p[2]] * len(seeds) for p in pairs], dtype=str)),
            "target_ocr_text": (("pair", "seed"), np.array([[p[3]] * len(seeds) for p in pairs], dtype=str)),
        },
        coords={
            "pair": np.arange(n_pairs),
            "site": np.arange(n_sites),
            "site_name": ("site", [SITE_NAMES[i % len(SITE_NAMES)] for i in range(n_sites)]),
            "site_kind": ("site", [SITE_KINDS[i % len(SITE_KINDS)] for i in range(n_sites)]),
            "source_prompt": ("pair", [p[0] for p in pairs]),
            "target_prompt": ("pair", [p[1] for p in pairs]),
            "source_text": ("pair", [p[2] for p in pairs]),
            "target_text": ("pair", [p[3] for p in pairs]),
            "t_start": np.array(t_starts),
            "seed": np.array(seeds),
        },
        attrs={
            "spec": json.dumps(spec),
            "versions": json.dumps(
                {"diffprobe": "0.1.0", "torch": "2.13.0", "diffusers": "0.35.0", "nnsight": "0.8.1"}
            ),
            "model": "tiny-glyph",
        },
    )


def make_counts(counts=(1, 2, 3, 5), n_pairs: int = 3, seeds=(0, 1), rng_seed: int = 0) -> xr.Dataset:
    """A layer-count sweep: more injected sites raise text alignment and lower image alignment."""
    rng = np.random.default_rng(rng_seed)
    c = np.asarray(counts, dtype=float)[:, None, None]
    shape = (len(counts), n_pairs, len(seeds))
    dims = ("n_sites", "pair", "seed")
    return xr.Dataset(
        {
            "ocr_f1_target": (dims, np.clip(1 - 0.8 / c + rng.normal(0, 0.03, shape), 0, 1)),
            "ssim": (dims, np.clip(1 - 0.08 * c + rng.normal(0, 0.02, shape), 0, 1)),
        },
        coords={
            "n_sites": np.asarray(counts),
            "sites_used": ("n_sites", [", ".join(SITE_NAMES[: int(k)]) for k in counts]),
            "pair": np.arange(n_pairs),
            "seed": np.asarray(seeds),
        },
    )
