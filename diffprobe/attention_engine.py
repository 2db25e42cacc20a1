"""The in-trace half of attention maps: recompute a site's attention probabilities and stream them into sums.

:mod:`diffprobe.engine` hands a :class:`SiteReader` the tensors one site computes at one step, in the order the
attention processor computes them (the call's keyword inputs, ``to_q``, image keys before or after the text K/V,
the text K/V after any edit). The reader rebuilds ``softmax(Q K^T / sqrt(d))`` as the processor does and adds the
image-query x text-key block into a running sum (:class:`MapStore`), or, for prompt-to-prompt, writes
``P_source @ V_self`` into the input of the output projection. Why and what: :mod:`diffprobe.attention`.
Kept apart from :mod:`diffprobe.attention` so that the engine does not import the user-facing half (no cycle).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .errors import InterventionError
from .plan import MapOp, Plan

__all__ = ["MapStore", "SiteReader", "probabilities", "SUPPORTED_PROCESSORS"]

#: the diffusers attention processors whose probabilities this module recomputes (checked before a run)
SUPPORTED_PROCESSORS = ("AttnProcessor2_0", "AttnAddedKVProcessor2_0", "JointAttnProcessor2_0", "FluxAttnProcessor")
_MAX_LOGITS = 2 ** 24  # floats per chunk of queries when the softmax runs over image keys too


# -- in the trace -------------------------------------------------------------------------------------------------
def _layout(site, family: str) -> str:
    if site.kind == "single":
        return "single"
    if site.kind == "joint":
        return "joint_flux" if family == "flux" else "joint"
    return "added" if site.kv[0] == "add_k_proj" else "cross"


def _apply_norm(module, x: torch.Tensor) -> torch.Tensor:
    # the class's forward, not module(x): calling a module inside an nnsight trace would be taken for a model call
    return x if module is None else type(module).forward(module, x)


def _rope(x: torch.Tensor, rope, lo: int, hi: int) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    if rope is None:
        return x
    return apply_rotary_emb(x, (rope[0][lo:hi], rope[1][lo:hi]), sequence_dim=1)


def probabilities(q: torch.Tensor, keys: torch.Tensor, text: slice, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias)`` over all ``keys``, keeping the ``text`` key columns.

    ``q``: (row, query, head, dim), ``keys``: (row, key, head, dim), ``bias``: (row, 1, 1, key) or None.
    Returns (row, head, query, token), float32. Queries are taken in chunks so the logits stay small."""
    q, keys = q.float(), keys.float()
    rows, n, heads, dim = q.shape
    chunk = max(1, _MAX_LOGITS // max(1, rows * heads * keys.shape[1]))
    out = []
    for a in range(0, n, chunk):
        logits = torch.einsum("rnhd,rshd->rhns", q[:, a:a + chunk], keys) / math.sqrt(dim)
        if bias is not None:
            logits = logits + bias
        out.append(torch.softmax(logits, dim=-1)[..., text])
    return torch.cat(out, dim=2)


@dataclass
class _Group:
    total: torch.Tensor  # (token, query)
    count: int = 0


@dataclass
class MapStore:
    """Per run: the modules behind each mapped site, and the running sums ``(name, variant) -> key -> _Group``."""

    modules: dict
    family: str
    text_len: int | None
    sums: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)  # (name, variant) -> MapOp (reduce, per_step, heads)
    sites: dict = field(default_factory=dict)     # name -> site labels
    steps: dict = field(default_factory=dict)     # name -> steps

    @classmethod
    def for_plan(cls, probe, plan: Plan, text_len: int | None) -> "MapStore | None":
        mapped = [sp for sp in plan.sites if sp.attn]
        if not mapped:
            return None
        modules = {}
        for sp in mapped:
            module = probe.denoiser.get_submodule(sp.site.name)
            proc = type(getattr(module, "processor", None)).__name__
            if proc not in SUPPORTED_PROCESSORS:
                raise InterventionError(
                    f"attention maps at {sp.site.label} ({sp.site.name}): its processor {proc} is not one diffprobe "
                    f"recomputes ({', '.join(SUPPORTED_PROCESSORS)}); reset it with module.set_processor(...).")
            if getattr(module, "fused_projections", False):
                raise InterventionError(f"attention maps at {sp.site.label}: fused QKV projections are not supported; "
                                        "call unfuse_qkv_projections() first.")
            modules[sp.site.name] = module
        store = cls(modules, probe.adapter.family, text_len)
        for sp in mapped:
            _check_replace(sp)
            seen = set()
            for op in sp.attn:
                if op.source is not None:
                    continue
                key = (op.name, op.variant)
                first = store.settings.setdefault(key, op)
                if key in seen or (first.reduce, first.per_step) != (op.reduce, op.per_step):
                    raise InterventionError(
                        f"variant {op.variant} has two AttentionMap captures named {op.name!r} that overlap at "
                        f"{sp.site.label} or disagree on reduce/per_step; give them different name=.", field="name")
                seen.add(key)
                store.sites.setdefault(op.name, []).append(sp.site.label)
                store.steps.setdefault(op.name, set()).update(op.steps)
        return store


def _check_replace(sp) -> None:
    """ReplaceAttention and a per-head Scale both write the input of ``to_out.0``: refuse them at one site and step."""
    replace = [op for op in sp.attn if op.source is not None]
    heads = [op for op in sp.out if op.heads is not None]
    if any(r.row == h.row and r.steps & h.steps for r in replace for h in heads):
        raise InterventionError(f"ReplaceAttention and a per-head Scale/Ablate act on the same row at {sp.site.label} "
                                "and step; split them into separate variants.")


class SiteReader:
    """The tensors one site hands over at one step, read in the order the processor computes them."""

    def __init__(self, store: MapStore, site, ops: Sequence[MapOp], n_rows: int, offsets):
        self.store, self.site, self.ops, self.n_rows = store, site, list(ops), n_rows
        self.offsets = offsets  # the engine's CFG-half layout check (engine._offsets)
        self.module = store.modules[site.name]
        self.layout = _layout(site, store.family)
        self.kv: dict[int, torch.Tensor] = {}
        self.kwargs: dict = {}
        self.k_image: torch.Tensor | None = None

    def before_kv(self, attn) -> None:
        """Read what runs before the text K/V: the call's keyword inputs (mask, rotary), ``to_q``, joint image keys."""
        if self.layout in ("cross", "added", "joint_flux", "single"):
            self.kwargs = dict(attn.inputs[1])
        self.q = attn.to_q.output
        if self.layout in ("joint", "joint_flux"):
            self.k_image = attn.to_k.output

    def see(self, j: int, value: torch.Tensor) -> None:
        """The text keys (j=0) or values (j=1) after any edit at this site."""
        self.kv[j] = value

    def after_kv(self, attn, step: int) -> None:
        if self.layout == "added" and not getattr(self.module, "only_cross_attention", False):
            self.k_image = attn.to_k.output
        offs = self.offsets(self.q.shape[0], self.n_rows, self.site.name)
        rows = sorted({offs[h] + r for op in self.ops for h in op.halves if h in offs
                       for r in ((op.row,) if op.source is None else (op.row, op.source.row))})
        if not rows:
            return
        probs = dict(zip(rows, self._probabilities(rows)))
        replace = [op for op in self.ops if op.source is not None]
        for op in self.ops:
            if op.source is None:
                self._accumulate(op, probs, offs, step)
        if replace:
            self._replace(attn, replace, probs, offs)

    # -- helpers --------------------------------------------------------------
    def _probabilities(self, rows: list[int]) -> torch.Tensor:
        m, heads, layout = self.module, self.site.heads, self.layout
        idx = torch.tensor(rows, device=self.q.device)
        split = lambda t: t.index_select(0, idx).unflatten(-1, (heads, -1))  # noqa: E731
        q, bias = split(self.q), None
        if layout == "cross":  # AttnProcessor2_0: norms (if any) on the split heads, text keys only
            q = _apply_norm(getattr(m, "norm_q", None), q)
            keys, text = _apply_norm(getattr(m, "norm_k", None), split(self.kv[0])), slice(None)
            bias = self._bias(idx, keys.shape[1])
        elif layout == "added":  # AttnAddedKVProcessor2_0: keys are [text, image] unless only_cross_attention
            keys = k_text = split(self.kv[0])
            text = slice(0, k_text.shape[1])
            if self.k_image is not None:
                keys = torch.cat([k_text, split(self.k_image)], dim=1)
            bias = self._bias(idx, keys.shape[1])
        elif layout in ("joint", "joint_flux"):
            k_text = _apply_norm(m.norm_added_k, split(self.kv[0]))
            k_img = _apply_norm(m.norm_k, split(self.k_image))
            q = _apply_norm(m.norm_q, q)
            t, n = k_text.shape[1], k_img.shape[1]
            if layout == "joint_flux":  # [text, image] positions, as the processor concatenates them
                rope = self.kwargs.get("image_rotary_emb")
                q, k_img, k_text = _rope(q, rope, t, t + n), _rope(k_img, rope, t, t + n), _rope(k_text, rope, 0, t)
            keys, text = torch.cat([k_text, k_img], dim=1), slice(0, t)
        else:  # single-stream: one [text, image] sequence
            t = self.store.text_len
            rope = self.kwargs.get("image_rotary_emb")
            keys = _rope(_apply_norm(m.norm_k, split(self.kv[0])), rope, 0, None)
            q = _rope(_apply_norm(m.norm_q, q), rope, 0, None)[:, t:]
            text = slice(0, t)
        return probabilities(q, keys, text, bias)

    def _bias(self, idx: torch.Tensor, n_keys: int) -> torch.Tensor | None:
        mask = self.kwargs.get("attention_mask")
        if mask is None:
            return None
        if self.layout == "added" or mask.numel() != self.q.shape[0] * n_keys:
            raise InterventionError(f"attention maps at {self.site.label}: an attention mask of shape "
                                    f"{tuple(mask.shape)} is not supported here.")
        mask = mask.reshape(self.q.shape[0], 1, 1, n_keys).index_select(0, idx)
        if mask.dtype == torch.bool:
            return torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
        return mask.float()

    def _accumulate(self, op: MapOp, probs: dict, offs: dict, step: int) -> None:
        sums = self.store.sums.setdefault((op.name, op.variant), {})
        for half in op.halves:
            if half not in offs:
                continue
            p = probs[offs[half] + op.row]  # (head, query, token)
            if op.heads is not None:
                p = p[list(op.heads)]
            key = (step, p.shape[1]) if op.per_step else p.shape[1]
            group = sums.get(key)
            if group is None:
                group = sums[key] = _Group(torch.zeros(p.shape[2], p.shape[1]))
            group.total += p.sum(0).T
            group.count += p.shape[0]

    def _replace(self, attn, ops: Sequence[MapOp], probs: dict, offs: dict) -> None:
        proj = attn.to_out[0]
        x = proj.input
        new = x.clone()
        heads = self.site.heads
        for op in ops:
            for half in op.halves:
                if half not in offs:
                    continue
                dst, src = offs[half] + op.row, offs[half] + op.source.row
                p_src = probs[src]
                v = self.kv[1][dst].unflatten(-1, (heads, -1)).float()  # (token, head, dim)
                if p_src.shape[2] != v.shape[0]:
                    raise InterventionError(f"ReplaceAttention at {self.site.label}: the source has {p_src.shape[2]} "
                                            f"text tokens, this row {v.shape[0]}.")
                out = torch.einsum("hnt,thd->nhd", p_src, v).to(x.dtype)
                chosen = list(range(heads)) if op.heads is None else list(op.heads)
                view = new[dst].view(new.shape[1], heads, -1)
                view[:, chosen] = out[:, chosen]
        proj.input = new
