"""The one experiment runner: spec -> layout -> validated cells -> batches -> engine -> metrics -> store.

Work is cut into batches whose composition depends only on the spec, so a batch index names the
same work in every run of the same spec: a store that holds batch 7 never recomputes it. Baseline
batches (each pair's unpatched source and target images, per seed) run first because every cell
is scored against its pair's source image.

Before the first denoising step every distinct cell intervention (one per group x t_s x head) is
planned against the model's catalogue, so a head or step that does not fit the model fails in
milliseconds with the spec field (and CLI option) that asked for it, not after the baselines ran.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .bench import PromptPair
from .errors import InterventionError, SiteError, SpecError
from .plan import Variant, make_plan
from .results import Layout, Store, assemble
from .sites import Site
from .spec import Experiment, template_intervention

__all__ = ["run_experiment", "resolve_layout", "Cell", "cells_of", "baseline_jobs"]


@dataclass(frozen=True)
class Cell:
    pair: int
    group: int  # site position (grouping 'each') or count position ('cumulative')
    t_start: int
    seed: int
    head: int = -1  # -1: the spec's heads (all when None)


def cells_of(spec: Experiment, n_groups: int) -> list[Cell]:
    heads = spec.heads if spec.per_head else (-1,)
    return [
        Cell(p, g, t, s, h)
        for p, s, t, g, h in itertools.product(
            range(len(spec.pairs)), spec.seeds, spec.t_starts, range(n_groups), heads
        )
    ]


def baseline_jobs(spec: Experiment) -> list[tuple[int, int]]:
    return [(p, s) for p in range(len(spec.pairs)) for s in spec.seeds]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def resolve_layout(spec: Experiment, catalogue) -> Layout:
    """The spec's sites against a model's catalogue, and the groups of sites each cell patches."""
    try:
        if isinstance(spec.sites, str):
            sites = list(catalogue.parse(spec.sites))
        else:
            sites = [_one_site(catalogue, s) for s in spec.sites]
    except SiteError as exc:
        raise SpecError(f"The spec's sites do not match the model: {exc}", field="sites") from None
    if spec.kind != "scale":
        textless = [s for s in sites if not s.carries_text]
        if textless:
            raise SpecError(
                f"The spec selects {textless[0].label} ({textless[0].name}), a self-attention site with no text K/V; "
                f"sweep text sites instead, e.g. sites='{_text_kind(catalogue)}:all'.", field="sites",
            )
    if spec.kind == "inject" and any(s.kind != "cross" for s in sites):
        raise SpecError(
            f"intervention='inject' needs cross-attention sites, but {sites[0].kind} sites were selected; "
            "use intervention='patch' for joint/single attention (SD3, FLUX).", field="intervention",
        )
    if spec.grouping == "cumulative" and max(spec.counts) > len(sites):
        raise SpecError(f"counts go up to {max(spec.counts)} but only {len(sites)} sites are selected.", field="counts")
    groups = [[i] for i in range(len(sites))] if spec.grouping == "each" else [list(range(k)) for k in spec.counts]
    return Layout(tuple(sites), tuple(tuple(g) for g in groups))


def _one_site(catalogue, label: str) -> Site:
    """A site by label (``cross:55``) or module name; errors name the valid choices."""
    if ":" in label:
        return catalogue.parse(label)[0]
    return catalogue.by_name(label)


def _text_kind(catalogue) -> str:
    return next((k for k in catalogue.kinds if k != "self"), "cross")


def _intervention(spec: Experiment, pair: PromptPair, sites: list[Site], t_start: int, head: int):
    heads = (head,) if head >= 0 else spec.heads
    return template_intervention(spec.intervention, prompt=pair.target_prompt, sites=list(sites),
                                 steps=f"{t_start}:", heads=heads)


#: the spec field behind each intervention argument the engine refuses
_SPEC_FIELD = {"heads": "heads", "steps": "t_starts", "sites": "sites"}


def check_cells(probe, spec: Experiment, layout: Layout) -> None:
    """Plan one variant per distinct (group, t_s, head) against the model: every refusal happens here."""
    pair = spec.pairs[0]
    for group, t_start, head in itertools.product(layout.groups, spec.t_starts, spec.heads if spec.per_head else (-1,)):
        sites = [layout.sites[i] for i in group]
        try:
            iv = _intervention(spec, pair, sites, t_start, head)
            make_plan([Variant(pair.source_prompt, (iv,), spec.seeds[0])], probe.sites, spec.steps,
                      supports_inject=probe.adapter.supports_inject)
        except InterventionError as exc:
            raise SpecError(str(exc), field=_SPEC_FIELD.get(exc.field, "intervention")) from None


def _generate(probe, spec: Experiment, variants: list[Variant], prefix_cache=None) -> np.ndarray:
    return probe.run(variants, steps=spec.steps, guidance=spec.guidance, height=spec.height, width=spec.width,
                     share_prefix=spec.share_prefix, prefix_cache=prefix_cache).images


def _score(spec: Experiment, images, source_images, pairs: list[PromptPair], prompts: list[str]) -> dict:
    from .metrics import compute

    return compute(
        list(spec.metrics), images=images, source_images=source_images,
        source_texts=[p.source_text for p in pairs], target_texts=[p.target_text for p in pairs],
        prompts=prompts, clip_dir=spec.clip_dir, engine=spec.ocr_engine,
    )


def _run_baselines(probe, spec: Experiment, jobs: list[tuple[int, int]]) -> dict:
    variants = []
    for p, s in jobs:
        pair = spec.pairs[p]
        variants += [Variant(pair.source_prompt, (), s), Variant(pair.target_prompt, (), s)]
    images = _generate(probe, spec, variants)
    src, tgt = images[0::2], images[1::2]
    pairs = [spec.pairs[p] for p, _ in jobs]
    return {
        "pair": np.array([p for p, _ in jobs]), "seed": np.array([s for _, s in jobs]),
        "source_image": src, "target_image": tgt,
        "source": _score(spec, src, src, pairs, [pp.source_prompt for pp in pairs]),
        "target": _score(spec, tgt, src, pairs, [pp.target_prompt for pp in pairs]),
    }


def _run_cells(probe, spec: Experiment, cells: list[Cell], layout: Layout, source_images: Callable,
               prefix_cache=None) -> dict:
    variants = []
    for c in cells:
        pair = spec.pairs[c.pair]
        iv = _intervention(spec, pair, layout.group_sites(c.group), c.t_start, c.head)
        variants.append(Variant(pair.source_prompt, (iv,), c.seed))
    images = _generate(probe, spec, variants, prefix_cache)
    pairs = [spec.pairs[c.pair] for c in cells]
    refs = np.stack([source_images(c.pair, c.seed) for c in cells])
    return {"cells": cells, "images": images, "metrics": _score(spec, images, refs, pairs, [p.source_prompt for p in pairs])}


def _probe_for(spec: Experiment, probe):
    """The probe to run on: the given one (checked against an explicit device/dtype), or ``spec.model`` loaded."""
    from .loading import load

    if probe is None:
        return load(spec.model, device=spec.device, dtype=spec.dtype, lora=spec.lora)
    have = probe.runtime
    if spec.dtype != "auto" and have.get("dtype") != spec.dtype:
        raise SpecError(f"the probe runs in {have.get('dtype')} but the spec asks for dtype={spec.dtype!r}; load it "
                        f"with diffprobe.load(..., dtype={spec.dtype!r}) or set dtype='auto'.", field="dtype")
    if spec.device != "auto" and have.get("device_type") != spec.device.split(":")[0]:
        raise SpecError(f"the probe runs on {have.get('device')} but the spec asks for device={spec.device!r}; load "
                        f"it with diffprobe.load(..., device={spec.device!r}) or set device='auto'.", field="device")
    return probe


#: variants per unit of storage for batch_size="auto"
AUTO_UNIT = {"cuda": 64, "mps": 16, "cpu": 8}


class _Sizer:
    """The largest call that fits: starts at the unit size and halves on an out-of-memory error."""

    def __init__(self, size: int):
        self.size = size

    def run(self, items: list, compute: Callable[[list], dict], variants_per_item: int = 1) -> dict:
        """``compute`` over ``items`` in calls of at most ``size`` variants (a baseline job is 2 variants)."""
        from .devices import is_out_of_memory

        while True:
            step = max(1, self.size // variants_per_item)
            try:
                parts = [compute(items[i : i + step]) for i in range(0, len(items), step)]
                return parts[0] if len(parts) == 1 else _concat(parts)
            except Exception as exc:  # only out-of-memory is retried; everything else propagates
                if not is_out_of_memory(exc) or step * variants_per_item <= variants_per_item:
                    raise
                self.size = max(1, self.size // 2)
                _free_memory()


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _concat(parts: list[dict]) -> dict:
    """One batch result from the results of its halves (arrays concatenated, lists joined, dicts merged)."""
    out = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if isinstance(first, dict):
            out[key] = _concat(values)
        elif isinstance(first, list):
            out[key] = [v for part in values for v in part]
        else:
            out[key] = np.concatenate(values)
    return out


@dataclass(frozen=True)
class Prepared:
    """What the driver needs to know about the model to lay out and check a sweep."""

    layout: Layout
    weights: str | None
    runtime: dict


def prepare(probe, spec: Experiment) -> Prepared:
    """Resolve the spec's sites on the model, plan every distinct cell and check that the metrics can run
    here (OCR engine installed, CLIP weights present): every refusal happens before the first batch."""
    from .errors import MetricError
    from .metrics import unavailable

    missing = unavailable(list(spec.metrics), clip_dir=spec.clip_dir, engine=spec.ocr_engine)
    if missing:
        name, reason = next(iter(missing.items()))
        raise MetricError(f"metric {name!r} cannot run here: {reason}", field="metrics")
    layout = resolve_layout(spec, probe.sites)
    check_cells(probe, spec, layout)
    return Prepared(layout, probe.weights_digest(), probe.runtime)


def compute_batch(probe, spec: Experiment, kind: str, items: list, layout: Layout, sources: dict,
                  size: int, prefix_cache=None) -> tuple[dict, int]:
    """One stored batch: baselines (``items`` are (pair, seed) jobs) or cells, in calls of at most ``size``
    variants, halving on out-of-memory. Returns the result and the call size that fitted. ``prefix_cache``
    (a :class:`diffprobe.engine.PrefixCache` kept for one model) lets batches reuse shared-prefix runs."""
    sizer = _Sizer(size)
    if kind == "base":
        return sizer.run(items, lambda jobs: _run_baselines(probe, spec, jobs), 2), sizer.size
    return sizer.run(items, lambda part: _run_cells(probe, spec, part, layout, lambda p, s: sources[(p, s)],
                                                    prefix_cache)), sizer.size


def prefix_order(batches: dict[int, list]) -> dict[int, list]:
    """Cell batches in the order that lets each (pair, seed) compute its shared prefix once: grouped by the
    first cell's (pair, seed), latest t_s first (a later batch forks no later, so it reuses the prefix run)."""
    def key(item):
        first = item[1][0]
        return (first.pair, first.seed, -first.t_start, item[0])

    return dict(sorted(batches.items(), key=key))


class _Local:
    """Runs batches in this process, one after the other."""

    def __init__(self, probe):
        from .engine import PrefixCache

        self.probe = probe
        self.prefix_cache = PrefixCache()  # the weights do not change during a sweep

    def prepare(self, spec: Experiment) -> Prepared:
        return prepare(self.probe, spec)

    def map(self, spec, kind, batches: dict[int, list], layout, sources, size):
        for i, items in batches.items():
            out, size = compute_batch(self.probe, spec, kind, items, layout, sources, size,  # a size that fitted stays
                                      self.prefix_cache)
            yield i, (out, size)


def run_experiment(spec: Experiment, *, probe=None, store=None, progress=None, executor=None):
    """Run or resume ``spec``; returns the assembled dataset (unfinished cells NaN, ``done`` False).

    ``executor`` runs the batches elsewhere (:class:`diffprobe.cluster.DaskExecutor`: on a cluster's workers);
    this process then only writes each finished batch into the store, once, as it arrives."""
    if not isinstance(spec, Experiment):
        raise SpecError(f"run takes an Experiment; got {type(spec).__name__}. Build one with Experiment(...).")
    if executor is not None and probe is not None:
        raise SpecError("pass either probe= (run here) or client= (run on a cluster), not both.")
    executor = executor or _Local(_probe_for(spec, probe))
    info = executor.prepare(spec)
    layout, runtime = info.layout, info.runtime
    st = Store.open(store, spec, weights=info.weights, layout=layout, runtime=runtime,
                    unit=spec.batch_size if spec.batch_size != "auto" else AUTO_UNIT.get(runtime["device_type"], 8))
    base_batches = _chunks(baseline_jobs(spec), max(1, st.unit // 2))
    cell_batches = _chunks(cells_of(spec, len(layout.groups)), st.unit)
    total = len(base_batches) + len(cell_batches)
    done = sum(st.has("base", i) for i in range(len(base_batches))) + sum(
        st.has("cell", i) for i in range(len(cell_batches)))
    used = [st.unit]

    def tick():
        if progress is not None:
            progress(done, total)

    tick()
    todo = {i: b for i, b in enumerate(base_batches) if not st.has("base", i)}
    for i, (out, size) in executor.map(spec, "base", todo, layout, {}, used[-1]):
        st.write_baseline(i, out)
        used.append(size)
        done += 1
        tick()
    sources = st.source_images()
    todo = prefix_order({i: b for i, b in enumerate(cell_batches) if not st.has("cell", i)})
    for i, (out, size) in executor.map(spec, "cell", todo, layout, sources, min(used)):
        st.write_cells(i, out)
        used.append(size)
        done += 1
        tick()
    ds = assemble(spec, layout, st)
    ds.attrs.update(runtime=json.dumps(runtime), batch_unit=st.unit, batch_size_used=min(used))
    st.finalize(ds)
    return ds
