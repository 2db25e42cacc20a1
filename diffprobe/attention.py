"""Attention maps: where each prompt token lands in the image, computed inside the trace and streamed.

Why. A per-word attention map (DAAM, attention-map-diffusers) is the first thing a researcher wants to see at the
layers that write the text. Those tools keep a map per step and layer and run out of memory on long runs, one
prompt at a time. Here the maps are rows of the same batched trace as every other intervention, and each is added
into a running sum the moment it is computed: a map over 50 steps costs the memory of one.

What is computed. At each site and step an :class:`~diffprobe.interventions.AttentionMap` names, the engine hands
this module the tensors the attention processor works from -- the query projection ``to_q``, the text key
projection (``to_k`` for cross attention, ``add_k_proj`` for IF added-KV and joint attention, the text prefix of
``to_k`` in FLUX single-stream blocks), after any edit at that site, and, where the processor also attends to image
keys, the image key projection. From them it recomputes the probabilities as the processor does: heads split, the
module's q/k norms applied (``norm_q``, ``norm_k``, ``norm_added_k``), FLUX's rotary embedding applied, then
``softmax(Q K^T / sqrt(d))`` over *every key the processor attends to*, keeping the image-query x text-key block.
So over plain cross attention a query's probabilities sum to 1 over the text tokens; over IF added-KV, joint and
single-stream attention they sum to the share of attention that goes to text (< 1). Masks the processor receives
(PixArt's padding mask) are applied the same way. Reading never writes: the image is bit-identical to an
uncaptured run of the same batch (``tests/test_attention.py``), and the values match a reference built from the
query and key that ``scaled_dot_product_attention`` itself receives, on the tiny pipeline of every architecture.

Aggregation. Each map (heads selected, summed) is added into one ``(token, query)`` sum per capture, sample and
image-token count; sites of different resolutions are combined after the run by bilinear upsampling to the finest
grid (linear, so the mean of upsampled maps is the upsampled mean). ``per_step=True`` keeps one sum per step.

Prompt-to-prompt. :class:`~diffprobe.interventions.ReplaceAttention` uses the same computation on the *source* row
and writes ``P_source @ V_self`` into the input of the site's output projection (``to_out.0``) -- the attention
output the row would have with the source's probabilities and its own values (Hertz et al., 2022, word swap).
"""
from __future__ import annotations

import math
import re
from html import escape
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import xarray as xr

from .attention_engine import SUPPORTED_PROCESSORS, MapStore, probabilities
from .errors import InterventionError
from .plan import Plan, Variant

__all__ = ["AttentionResult", "attend", "run", "word_maps", "token_table", "overlay_figure", "overlay_png",
           "probabilities", "SUPPORTED_PROCESSORS"]


# -- after the run --------------------------------------------------------------------------------------------------
def _grid(n: int, height: int, width: int) -> tuple[int, int]:
    """(rows, columns) of ``n`` image tokens laid out row-major over an image of ``height`` x ``width``."""
    best = None
    for h in range(1, n + 1):
        if n % h == 0:
            err = abs(math.log((h / (n // h)) / (height / width)))
            if best is None or err < best[0]:
                best = (err, h, n // h)
    if best is None or best[0] > 0.01:
        raise InterventionError(f"cannot lay {n} image tokens out as a {height}x{width} image's grid.")
    return best[1], best[2]


def _combine(groups: dict, height: int, width: int, reduce: str) -> np.ndarray:
    """Upsample each resolution's sum to the finest grid and add; divide by the count for a mean."""
    import torch.nn.functional as F

    finest = max(groups)
    size = _grid(finest, height, width)
    total, count = None, 0
    for n, g in groups.items():
        grid = g.total.reshape(g.total.shape[0], *_grid(n, height, width))
        if grid.shape[1:] != size:
            grid = F.interpolate(grid[None], size=size, mode="bilinear", align_corners=False)[0]
        total = grid if total is None else total + grid
        count += g.count
    return (total / count if reduce == "mean" else total).numpy()


def label_maps(store: MapStore | None, plan: Plan, images: np.ndarray, tokens: dict[int, list] | None = None
               ) -> dict[str, xr.DataArray]:
    """One DataArray per capture name, dims (sample, token, y, x) (or (sample, step, token, y, x) per step)."""
    if store is None:
        return {}
    height, width = images.shape[1:3]
    out = {}
    for name in dict.fromkeys(n for n, _ in store.settings):
        variants = sorted(v for n, v in store.settings if n == name)
        op = store.settings[(name, variants[0])]
        arrays, steps = [], sorted(store.steps[name])
        for v in variants:
            sums = store.sums.get((name, v), {})
            if op.per_step:
                arrays.append(np.stack([_combine({n: g for (s, n), g in sums.items() if s == step}, height, width,
                                                 op.reduce) for step in steps]))
            else:
                arrays.append(_combine(sums, height, width, op.reduce))
        data = np.stack(arrays)
        dims = ("sample", "step", "token", "y", "x") if op.per_step else ("sample", "token", "y", "x")
        coords = {"sample": variants, "token": np.arange(data.shape[-3]),
                  "prompt": ("sample", [plan.rows[v].prompt for v in variants])}
        if op.per_step:
            coords["step"] = steps
        if tokens:
            coords["token_text"] = (("sample", "token"), [_texts(tokens.get(v), data.shape[-3]) for v in variants])
        attrs = {"sites": list(dict.fromkeys(store.sites[name])), "steps": steps, "reduce": op.reduce,
                 "heads": "all" if op.heads is None else list(op.heads), "cfg": op.halves[0],
                 "image_size": [int(height), int(width)],
                 "description": "text-token -> image attention probabilities (image queries x text keys)"}
        out[name] = xr.DataArray(data.astype(np.float32), dims=dims, coords=coords, name=name, attrs=attrs)
    return out


def _texts(table, n: int) -> list[str]:
    texts = [t.text for t in table] if table else []
    return (texts + [""] * n)[:n]


# -- tokens and words ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    index: int  # position in the text sequence the denoiser reads
    text: str
    start: int  # character span in the prompt ([0, 0) for special tokens)
    end: int
    unknown: bool


def _segments(pipe, call_kwargs: dict) -> list[tuple[object, int]]:
    """(tokenizer, offset in the text sequence) for each tokenizer whose tokens the denoiser's text keys hold."""
    name = type(pipe).__name__
    if name.startswith("StableDiffusion3"):
        segs = [(pipe.tokenizer, 0)]
        if getattr(pipe, "tokenizer_3", None) is not None:
            segs.append((pipe.tokenizer_3, int(pipe.tokenizer_max_length)))
        return segs
    if name.startswith("Flux"):
        return [(pipe.tokenizer_2, 0)]
    return [(pipe.tokenizer, 0)]


def token_table(probe, prompt: str, n_tokens: int | None = None) -> list[Token]:
    """The tokens of ``prompt`` as the denoiser's text keys hold them, with their character spans.

    Uses the tokenizer's offsets, so it works for word-level (the embedded glyph model), character-level (the tiny
    pipelines) and subword tokenizers alike. SD3 holds CLIP tokens then T5 tokens: a word appears in both."""
    pipe = probe.pipeline
    kwargs = probe.adapter.call_kwargs(pipe)
    out: dict[int, Token] = {}
    for tok, offset in _segments(pipe, kwargs):
        if not getattr(tok, "is_fast", False):
            raise InterventionError("word maps need a fast tokenizer (character offsets); index tokens instead.")
        limit = None if n_tokens is None else n_tokens - offset
        enc = tok(prompt, return_offsets_mapping=True, truncation=limit is not None, max_length=limit)
        texts = tok.convert_ids_to_tokens(enc["input_ids"])
        for i, (tid, text, (a, b)) in enumerate(zip(enc["input_ids"], texts, enc["offset_mapping"])):
            out[offset + i] = Token(offset + i, text, a, b, tid == tok.unk_token_id and tok.unk_token_id is not None)
    n = n_tokens or (max(out) + 1 if out else 0)
    return [out.get(i, Token(i, "", 0, 0, False)) for i in range(n)]


def word_tokens(table: Sequence[Token], prompt: str, word: str) -> list[int]:
    """Indices of the tokens that cover ``word`` (case-insensitive, as a whole word where possible) in ``prompt``."""
    if not isinstance(word, str) or not word.strip():
        raise InterventionError(f"a word to map must be a non-empty string; got {word!r}.", field="words")
    spans = [m.span() for m in re.finditer(rf"(?<![0-9A-Za-z]){re.escape(word)}(?![0-9A-Za-z])", prompt, re.I)]
    spans = spans or [m.span() for m in re.finditer(re.escape(word), prompt, re.I)]
    if not spans:
        words = sorted(set(re.findall(r"[0-9A-Za-z]+", prompt)))
        raise InterventionError(f"{word!r} is not in the prompt {prompt!r}; its words are {', '.join(words)}.",
                                field="words")
    hits = [t.index for t in table if t.end > t.start and any(t.start < b and a < t.end for a, b in spans)]
    if not hits:
        raise InterventionError(f"{word!r} has no token in the text the model reads (truncated?).", field="words")
    return hits


def word_maps(maps: xr.DataArray, table_of: dict[int, Sequence[Token]], words: Sequence[str]) -> xr.DataArray:
    """(sample, word, y, x): each word's probability mass, the sum over its tokens (``table_of``: sample -> tokens).
    With several prompts, a word missing from one prompt is NaN there (an error if no prompt has it)."""
    data, token_ids, found = [], [], set()
    for s, prompt in zip(maps["sample"].values, maps["prompt"].values):
        rows, ids = [], []
        for w in words:
            try:
                idx = word_tokens(table_of[int(s)], str(prompt), w)
            except InterventionError:
                if maps.sizes["sample"] == 1:
                    raise
                idx = []  # not in this prompt: NaN here; an error only if no prompt has it
            found.update([w] if idx else [])
            grid = maps.sel(sample=s).isel(token=idx).sum("token").values if idx else np.full(maps.shape[-2:], np.nan)
            rows.append(grid)
            ids.append(",".join(map(str, idx)))
        data.append(np.stack(rows))
        token_ids.append(ids)
    missing = [w for w in words if w not in found]
    if missing:
        raise InterventionError(f"{missing[0]!r} is in none of the prompts.", field="words")
    return xr.DataArray(
        np.stack(data), dims=("sample", "word", "y", "x"),
        coords={"sample": maps["sample"].values, "word": list(words), "prompt": ("sample", maps["prompt"].values),
                "tokens": (("sample", "word"), token_ids)},
        name="word_attention", attrs={**maps.attrs, "word_reduce": "sum over the word's tokens"})


# -- running ----------------------------------------------------------------------------------------------------------
def run(probe, variants: Sequence[Variant], *, steps: int, guidance=None, height=None, width=None):
    """:meth:`Probe.run` that also returns the attention maps: ``(Generation, {name: DataArray})``."""
    from .captures import label_captures
    from .probe import Generation

    plan, result = probe.execute(variants, steps=steps, guidance=guidance, height=height, width=width)
    tables = {}
    if result.maps is not None:
        n_tok = {v: g.total.shape[0] for (_, v), sums in result.maps.sums.items() for g in sums.values()}
        tables = {v: token_table(probe, plan.rows[v].prompt, n) for v, n in n_tok.items()}
    maps = label_maps(result.maps, plan, result.images, tables)
    gen = Generation(images=result.images, captures=label_captures(result, plan))
    return gen, maps, tables


@dataclass
class AttentionResult:
    """Images (uint8, sample x y x x x rgb), token maps (sample, token, y, x) and, if words were given, word maps."""

    images: np.ndarray
    maps: xr.DataArray
    words: xr.DataArray | None = None
    tokens: dict = field(default_factory=dict)

    def figure(self, sample: int = 0, word: str | None = None):
        """A plotly overlay of one word's map (the first word by default) on the sample's image."""
        if self.words is None:
            raise InterventionError("no words were mapped; pass words=[...] to attend().", field="words")
        word = word or str(self.words["word"].values[0])
        return overlay_figure(self.images[sample], self.words.sel(word=word).isel(sample=sample).values,
                              f"{word}: {self.words['prompt'].values[sample]}")


def attend(probe, prompts: str | Sequence[str], *, steps: int, words: Sequence[str] | None = None,
           sites="cross:all", window=None, heads=None, seed: int = 0, per_step: bool = False, reduce: str = "mean",
           interventions=(), guidance=None, height=None, width=None) -> AttentionResult:
    """Generate ``prompts`` and map where each token (and each of ``words``) lands, at ``sites`` over the step
    ``window`` (default: every step) and ``heads`` (default: all), averaged on the fly.

    ``words`` map to their tokens through the tokenizer's offsets; a word's map is the sum over its tokens."""
    from .interventions import AttentionMap
    from .plan import interventions_tuple

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if isinstance(words, str):
        words = [words]
    cap = AttentionMap(sites=sites, steps=window, heads=heads, per_step=per_step, reduce=reduce, name="attention")
    extra = interventions_tuple(interventions)
    variants = [Variant(p, (*extra, cap), seed) for p in prompts]
    gen, maps, tables = run(probe, variants, steps=steps, guidance=guidance, height=height, width=width)
    da = maps["attention"]
    wm = word_maps(da, tables, words) if words and not per_step else None
    return AttentionResult(gen.images, da, wm, tables)


# -- pictures ---------------------------------------------------------------------------------------------------------
def upsample(map2d: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(map2d, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay_figure(image: np.ndarray, map2d: np.ndarray, title: str = "", opacity: float = 0.55):
    """The image with the map upsampled (bilinear) to its size on top, as a plotly figure."""
    import plotly.graph_objects as go

    h, w = image.shape[:2]
    up = upsample(map2d, h, w)
    fig = go.Figure([go.Image(z=image), go.Heatmap(z=up, opacity=opacity, colorscale="Inferno", showscale=True,
                                                   hovertemplate="x %{x}, y %{y}: %{z:.3f}<extra></extra>")])
    scale = max(1, 480 // w)
    fig.update_layout(title=escape(title), width=w * scale + 160, height=h * scale + 120,
                      margin=dict(l=20, r=20, t=50, b=20), yaxis=dict(autorange="reversed", scaleanchor="x"))
    return fig


def overlay_png(image: np.ndarray, map2d: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """A static overlay (uint8): the map, scaled to its maximum, as a jet heat map over the greyed image."""
    h, w = image.shape[:2]
    m = upsample(np.nan_to_num(map2d), h, w)
    m = m / m.max() if m.max() > 0 else m
    heat = np.clip(np.stack([1.5 - np.abs(4 * m - 3), 1.5 - np.abs(4 * m - 2), 1.5 - np.abs(4 * m - 1)], -1), 0, 1)
    grey = np.asarray(image, dtype=np.float64).mean(-1, keepdims=True)
    return np.clip(grey * (1 - alpha) + 255.0 * heat * alpha, 0, 255).astype(np.uint8)
