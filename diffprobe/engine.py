"""The engine: run a batch of variants through the full denoising loop in one nnsight trace.

How it works. All rows of a :class:`~diffprobe.plan.Plan` go into *one* pipeline call (one nnsight
invoke holding the list of prompts, one generator per row so that every row draws exactly the
noise it would draw alone). Inside the trace, a loop over ``tracer.iter[steps]`` visits each
denoising step that has work; at each step it walks the touched sites in execution order and, for
each, reads the K/V projection outputs (or the attention output), builds an edited copy and
assigns it back. Because every row of the batch lives in the same tensor, a Patch is a row copy
inside one forward pass: the source row's value at this site and step is right there, so no
cache of all steps is kept, no barrier round-trips between invokes are needed, and memory does
not grow with the number of steps. Edits are assignments (``env.output = new``), never in-place
writes, which nnsight may silently drop.

Shared prefix. Before the first step that any operation touches (the plan's ``prefix_end``), every
row denoises unedited, so rows that share (prompt, negative prompt, seed) are the same computation.
When a plan has such duplicates (a sweep batch: many sites of one pair and t_s), the engine first runs
the distinct rows alone up to that step, recording the denoiser's output at each step, then runs the
whole batch with the denoiser *skipped* (nnsight's ``Envoy.skip``) at those steps, replaying each
row's recorded output: the scheduler and the pipeline's guidance arithmetic still run on every row,
so each row reaches the fork step with exactly the latents its distinct row reached. The denoiser
work is then ``distinct x k + rows x (n - k)`` instead of ``rows x n``. A caller that keeps a
:class:`PrefixCache` across calls on unchanged weights (the sweep runner does) reuses a recorded
prefix for any later batch with the same distinct rows and settings that forks no later: the prefix
run of the same rows is the same computation, so reusing it is exact, and a sweep that runs each
(pair, seed)'s batches from the latest t_s down computes each prefix once.

Only this module and ``zoo/`` import nnsight. Nothing is installed on the model outside a trace:
nnsight removes its hooks when the trace exits, also when it exits by an exception.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .devices import _execution_device
from .attention_engine import MapStore, SiteReader
from .errors import InterventionError
from .plan import CapOp, FromRow, FromTensor, KvOp, OutOp, Plan

__all__ = ["run_plan", "EngineResult", "PrefixCache", "prefix_end", "distinct_rows"]


@dataclass
class EngineResult:
    """Images (uint8, one per variant) and captured tensors (name -> variant -> [step, ...])."""

    images: np.ndarray
    captures: dict[str, dict[int, torch.Tensor]] = field(default_factory=dict)
    capture_steps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    maps: object = None  # diffprobe.attention.MapStore: running sums of attention maps (AttentionMap)
    shared_steps: int = 0  # denoising steps run once per distinct row and replayed to the others
    row_steps: int = 0  # denoiser work done here: rows x steps, prefix run (unless reused) and main run


def _resolve(envoy, path: str):
    for part in path.split("."):
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _offsets(rows_in_tensor: int, n_rows: int, where: str) -> dict[str, int]:
    """Where each CFG half starts in a tensor of ``rows_in_tensor`` rows ([uncond..., cond...]).

    Any other row count means the pipeline batches differently from what the plan assumes (e.g. a
    pipeline that repeats images per prompt); editing by row index would then hit the wrong images, so
    every edit and capture path refuses it."""
    if rows_in_tensor == 2 * n_rows:
        return {"uncond": 0, "cond": n_rows}
    if rows_in_tensor == n_rows:
        return {"cond": 0}
    raise InterventionError(
        f"unexpected batch of {rows_in_tensor} rows at {where} for a plan of {n_rows} rows (expected {n_rows} "
        f"or {2 * n_rows} with classifier-free guidance); diffprobe supports one image per prompt "
        "(num_images_per_prompt=1)."
    )


def _write(new: torch.Tensor, dst: int, value: torch.Tensor, heads, n_heads: int, tokens: int | None) -> None:
    target = new[dst] if tokens is None else new[dst, :tokens]
    if tokens is not None:
        value = value[:tokens]
    if heads is None:
        target.copy_(value)
        return
    shape = (target.shape[0], n_heads, -1)
    target.view(shape)[:, list(heads)] = value.reshape(shape)[:, list(heads)]


def _edit_kv(x: torch.Tensor, ops: Sequence[KvOp], j: int, plan: Plan, site, text_len, injected) -> torch.Tensor:
    offs = _offsets(x.shape[0], len(plan.rows), site.name)
    new = x.clone()
    tokens = text_len if site.text_prefix else None
    for op in ops:
        for half in op.halves:
            if half not in offs:
                continue  # no CFG in this run: the uncond half does not exist
            dst = offs[half] + op.row
            if isinstance(op.source, FromRow):
                value = x[offs[half] + op.source.row]
            elif isinstance(op.source, FromTensor):
                value = injected[(op.source.key, site.name)][half][j].to(device=x.device, dtype=x.dtype)
            else:
                value = torch.zeros_like(x[dst])
            _write(new, dst, value, op.heads, site.heads, tokens)
    return new


def _scale_rows(t: torch.Tensor, ops: Sequence[OutOp], n_rows: int, n_heads: int, where: str) -> torch.Tensor:
    """Scale whole rows, or (ops with heads) those heads' channel groups of a heads-concatenated tensor."""
    offs = _offsets(t.shape[0], n_rows, where)
    new = t.clone()
    for op in ops:
        for half in op.halves:
            if half in offs:
                r = offs[half] + op.row
                if op.heads is None:
                    new[r] = t[r] * op.factor
                else:
                    view = new[r].view(*new[r].shape[:-1], n_heads, -1)
                    view[..., list(op.heads), :] = view[..., list(op.heads), :] * op.factor
    return new


def _edit_output(out, ops: Sequence[OutOp], n_rows: int, n_heads: int, where: str):
    """Scale the image-stream output (the first element when the module returns a tuple)."""
    if isinstance(out, torch.Tensor):
        return _scale_rows(out, ops, n_rows, n_heads, where)
    return type(out)([_scale_rows(out[0], ops, n_rows, n_heads, where), *out[1:]])


def _record(store, ops: Sequence[CapOp], value, n_rows: int, where: str, part: int = 0) -> None:
    """Save each op's row of ``value``; ``part`` picks the op's output name (0: keys or the output, 1: values)."""
    if not isinstance(value, torch.Tensor):
        value = value[0]
    offs = _offsets(value.shape[0], n_rows, where)
    for op in ops:
        if op.half in offs:
            store[op.outputs[part]][op.variant].append(value[offs[op.half] + op.row].detach().clone())


def precompute_injections(probe, plan: Plan) -> dict:
    """K/V for Inject / Ablate(mean|empty): (key, site name) -> {half: (k, v)}; no denoiser run."""
    if not plan.injections:
        return {}
    adapter, pipe, denoiser = probe.adapter, probe.pipeline, probe.denoiser
    states: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, (prompt, negative, mean_over) in plan.injections.items():
        prompts = list(mean_over) or [prompt]
        cond, uncond = adapter.encode(pipe, prompts, [negative] * len(prompts) if negative else None)
        states[key] = (cond.mean(0), uncond.mean(0))
    out: dict = {}
    with torch.no_grad():
        for sp in plan.sites:
            for op in sp.kv:
                if not isinstance(op.source, FromTensor) or (op.source.key, sp.site.name) in out:
                    continue
                cond, uncond = states[op.source.key]
                out[(op.source.key, sp.site.name)] = {
                    "cond": [t[0] for t in adapter.site_kv(denoiser, sp.site, cond[None])],
                    "uncond": [t[0] for t in adapter.site_kv(denoiser, sp.site, uncond[None])],
                }
    return out


def _apply_step(step: int, plan: Plan, denoiser_env, store, text_len, injected, projected, maps=None) -> None:
    n = len(plan.rows)
    for sp in plan.sites:
        if sp.site is None:
            ops = sp.cap_at(step, "denoiser")
            if ops:
                _record(store, ops, denoiser_env.output, n, "the denoiser output")
            continue
        kv_ops, out_ops = sp.kv_at(step), sp.out_at(step)
        kv_caps, out_caps = sp.cap_at(step, "kv"), sp.cap_at(step, "output")
        map_ops = sp.attn_at(step)
        if not (kv_ops or out_ops or kv_caps or out_caps or map_ops):
            continue
        attn = _resolve(denoiser_env, sp.site.name)
        reader = SiteReader(maps, sp.site, map_ops, n, _offsets) if map_ops else None
        if reader is not None:
            reader.before_kv(attn)  # the query (and joint image keys) run before the text K/V
        if kv_ops or kv_caps or reader is not None:
            for j, sub in enumerate(sp.site.kv):  # keys (j=0), then values (j=1): the order they run in
                env = getattr(attn, sub)
                value = env.output
                if kv_ops:
                    value = _edit_kv(value, kv_ops, j, plan, sp.site, text_len, injected)
                    env.output = value
                if kv_caps:
                    _record(store, kv_caps, value, n, sp.site.name, part=j)
                if reader is not None:
                    reader.see(j, value)
        if reader is not None:
            reader.after_kv(attn, step)  # attention maps from the (edited) K; ReplaceAttention writes to_out.0's input
        head_ops = [op for op in out_ops if op.heads is not None]
        if head_ops:
            # a head's contribution is its slice of the input of the output projection
            if sp.site.name in projected:
                proj = attn.to_out[0]
                proj.input = _scale_rows(proj.input, head_ops, n, sp.site.heads, sp.site.name)
            else:  # no output projection (FLUX single-stream): the output is still per head
                attn.output = _edit_output(attn.output, head_ops, n, sp.site.heads, sp.site.name)
        whole_ops = [op for op in out_ops if op.heads is None]
        if whole_ops or out_caps:
            value = attn.output
            if whole_ops:
                value = _edit_output(value, whole_ops, n, sp.site.heads, sp.site.name)
                attn.output = value
            if out_caps:
                _record(store, out_caps, value, n, sp.site.name)


def prefix_end(plan: Plan) -> int:
    """The first step any operation touches (edit, capture, attention map); ``n_steps`` when none does."""
    steps = plan.steps
    return steps[0] if steps else plan.n_steps


def distinct_rows(plan: Plan) -> tuple[list, list[int]]:
    """The plan's distinct rows (prompt, negative prompt, seed) and, for each row, its distinct row's index."""
    keys: dict = {}
    index = [keys.setdefault((r.prompt, r.negative_prompt, int(r.seed)), len(keys)) for r in plan.rows]
    return [plan.rows[index.index(i)] for i in range(len(keys))], index


def _call_kwargs(probe, rows, n_steps: int, guidance, height, width, output_type: str) -> dict:
    pipe = probe.pipeline
    device = _execution_device(pipe)  # with CPU offload the weights sit on the CPU; the noise is drawn where it runs
    kwargs = probe.adapter.call_kwargs(pipe)
    kwargs.update(probe.defaults.get("call", {}))  # a shipped model's own call settings (glyph-mmdit's T5 length)
    kwargs.update(
        num_inference_steps=n_steps, output_type=output_type,
        generator=[torch.Generator(device).manual_seed(int(r.seed)) for r in rows],
    )
    if guidance is not None:
        kwargs["guidance_scale"] = float(guidance)
    if height is not None:
        kwargs["height"] = int(height)
    if width is not None:
        kwargs["width"] = int(width)
    if any(r.negative_prompt for r in rows):
        kwargs["negative_prompt"] = [r.negative_prompt for r in rows]
    return kwargs


def _first_tensor(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def _run_prefix(probe, rows, end: int, n_steps: int, kwargs_for) -> list:
    """The denoiser's output at steps ``0 .. end-1`` for ``rows`` alone (later steps are skipped, not run)."""
    model = probe.model
    denoiser_env = getattr(model, probe.adapter.denoiser_attr)
    outs: list = []
    with model.generate([r.prompt for r in rows], **kwargs_for(rows, "latent")) as tracer:
        for step in tracer.iter[0:n_steps]:
            if step < end:
                outs.append(denoiser_env.output.save())
            else:  # the rest of the loop only steps the scheduler: the result is not used
                denoiser_env.skip(outs[-1])
    return list(outs)


class PrefixCache:
    """Recorded prefix runs, newest last; keep one only across calls whose model weights do not change."""

    def __init__(self, entries: int = 2):
        self.entries = entries
        self._runs: OrderedDict = OrderedDict()
        self.hits = 0

    def outputs(self, key, end: int, compute) -> tuple[list, bool]:
        """The denoiser outputs of steps ``0 .. end-1`` for ``key``, and whether a recorded run served them."""
        have = self._runs.get(key)
        if have is not None and len(have) >= end:
            self._runs.move_to_end(key)
            self.hits += 1
            return have[:end], True
        self._runs[key] = outs = compute()
        self._runs.move_to_end(key)
        while len(self._runs) > self.entries:
            self._runs.popitem(last=False)
        return outs, False


def _replay(out, index: list[int], n_distinct: int):
    """``out`` (a distinct-rows denoiser output) spread over the plan's rows: a copy, row for row."""
    t = _first_tensor(out)
    idx = torch.tensor(index, device=t.device)
    if t.shape[0] == 2 * n_distinct:  # classifier-free guidance: [uncond..., cond...]
        idx = torch.cat([idx, idx + n_distinct])
    elif t.shape[0] != n_distinct:
        raise InterventionError(
            f"unexpected batch of {t.shape[0]} rows in the denoiser output for {n_distinct} prompts; diffprobe "
            "supports one image per prompt (num_images_per_prompt=1).")
    spread = t.index_select(0, idx)
    if isinstance(out, torch.Tensor):
        return spread
    return type(out)([spread, *out[1:]])


def run_plan(probe, plan: Plan, *, guidance: float | None, height: int | None, width: int | None,
             share_prefix: bool = True, prefix_cache: PrefixCache | None = None) -> EngineResult:
    """Execute a plan in one traced pipeline call; returns images for the plan's variants.

    With ``share_prefix`` (the default) the steps before :func:`prefix_end` run once per distinct row
    when the plan repeats a row (see the module docstring); ``share_prefix=False`` runs every row."""
    model, adapter, pipe = probe.model, probe.adapter, probe.pipeline
    injected = precompute_injections(probe, plan)

    def kwargs_for(rows, output_type="np"):
        return _call_kwargs(probe, rows, plan.n_steps, guidance, height, width, output_type)

    kwargs = kwargs_for(plan.rows)
    text_len = adapter.text_len(pipe, kwargs)
    prompts = [r.prompt for r in plan.rows]
    distinct, index = distinct_rows(plan)
    shared = prefix_end(plan) if share_prefix and len(distinct) < len(plan.rows) else 0
    replayed, computed = [], shared  # prefix steps computed here (0 when a recorded prefix run is reused)
    if shared:
        def compute():
            return _run_prefix(probe, distinct, shared, plan.n_steps, kwargs_for)

        if prefix_cache is None:
            replayed = compute()
        else:
            key = (tuple(distinct), plan.n_steps, guidance, height, width)
            replayed, reused = prefix_cache.outputs(key, shared, compute)
            computed = 0 if reused else shared
    store: dict = defaultdict(lambda: defaultdict(list))
    steps = sorted(set(range(shared)) | set(plan.steps))
    denoiser_env = getattr(model, adapter.denoiser_attr)
    projected = {  # sites whose per-head output passes through an output projection `to_out.0`
        sp.site.name for sp in plan.sites
        if sp.site is not None and hasattr(probe.denoiser.get_submodule(sp.site.name), "to_out")
    }
    maps = MapStore.for_plan(probe, plan, text_len)
    with model.generate(prompts, **kwargs) as tracer:
        if steps:
            for step in tracer.iter[steps]:
                if step < shared:
                    denoiser_env.skip(_replay(replayed[step], index, len(distinct)))
                else:
                    if shared:
                        # Anchor the step on the denoiser itself: a skipped denoiser still counts its calls, the
                        # modules inside it do not, so their occurrence lags the step by ``shared``. The first
                        # read at a pinned step relaxes nnsight's pin; the reads below then follow the model.
                        denoiser_env.input  # noqa: B018
                    _apply_step(step, plan, denoiser_env, store, text_len, injected, projected, maps)
        output = model.output.save()
    images = np.asarray(output.images)[: plan.n_variants]
    images = np.clip(np.round(images * 255.0), 0, 255).astype(np.uint8)
    captures = {name: {v: torch.stack(ts) for v, ts in per.items()} for name, per in store.items()}
    cap_steps = {name: op.steps for sp in plan.sites for op in sp.cap for name in op.outputs}
    return EngineResult(images=images, captures=captures, capture_steps=cap_steps, maps=maps, shared_steps=shared,
                        row_steps=len(distinct) * computed + len(plan.rows) * (plan.n_steps - shared))
