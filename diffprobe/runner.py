"""The one experiment runner: cells -> batches -> engine -> metrics -> store.

Work is cut into batches whose composition depends only on the spec, so a batch index names the
same work in every run of the same spec: a store that holds batch 7 never recomputes it. Baseline
batches (each pair's unpatched source and target images, per seed) run first because every cell
is scored against its pair's source image.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bench import PromptPair
from .experiments import Experiment, resolve_sites
from .interventions import Ablate, Inject, Patch
from .plan import Variant
from .results import Store, assemble

__all__ = ["run_experiment", "Cell", "cells_of", "baseline_jobs"]


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


def _groups(spec: Experiment, sites: list) -> list[list]:
    if spec.grouping == "each":
        return [[s] for s in sites]
    return [sites[:k] for k in spec.counts]


def _intervention(spec: Experiment, pair: PromptPair, sites: list, t_start: int, head: int):
    heads = (head,) if head >= 0 else spec.heads
    common = dict(sites=list(sites), steps=f"{t_start}:", heads=heads)
    if spec.intervention == "inject":
        return Inject(prompt=pair.target_prompt, **common)
    if spec.intervention == "patch":
        return Patch(source=pair.target_prompt, **common)
    return Ablate(mode=spec.ablate_mode, **common)


def _generate(probe, spec: Experiment, variants: list[Variant]) -> np.ndarray:
    return probe.run(variants, steps=spec.steps, guidance=spec.guidance, height=spec.height, width=spec.width).images


def _score(spec: Experiment, images, source_images, pairs: list[PromptPair], prompts: list[str]) -> dict:
    from .metrics import compute

    return compute(
        list(spec.metrics), images=images, source_images=source_images,
        source_texts=[p.source_text for p in pairs], target_texts=[p.target_text for p in pairs],
        prompts=prompts, clip_dir=spec.clip_dir,
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


def _run_cells(probe, spec: Experiment, cells: list[Cell], groups: list[list], source_images: Callable) -> dict:
    variants = []
    for c in cells:
        pair = spec.pairs[c.pair]
        iv = _intervention(spec, pair, groups[c.group], c.t_start, c.head)
        variants.append(Variant(pair.source_prompt, (iv,), c.seed))
    images = _generate(probe, spec, variants)
    pairs = [spec.pairs[c.pair] for c in cells]
    refs = np.stack([source_images(c.pair, c.seed) for c in cells])
    return {"cells": cells, "images": images, "metrics": _score(spec, images, refs, pairs, [p.source_prompt for p in pairs])}


def run_experiment(spec: Experiment, *, probe=None, store=None, progress=None):
    """Run or resume ``spec``; returns the assembled dataset (unfinished cells NaN, ``done`` False)."""
    from .zoo.loading import load

    probe = probe if probe is not None else load(spec.model)
    sites = resolve_sites(spec, probe.sites)
    groups = _groups(spec, sites)
    cells = cells_of(spec, len(groups))
    jobs = baseline_jobs(spec)
    base_batches = _chunks(jobs, max(1, spec.batch_size // 2))
    cell_batches = _chunks(cells, spec.batch_size)
    st = Store.open(store, spec, weights=probe.weights_digest())
    total = len(base_batches) + len(cell_batches)
    done = 0

    def tick():
        if progress is not None:
            progress(done, total)

    tick()
    for i, batch in enumerate(base_batches):
        if not st.has("base", i):
            st.write_baseline(i, _run_baselines(probe, spec, batch))
        done += 1
        tick()
    sources = st.source_images()
    for i, batch in enumerate(cell_batches):
        if not st.has("cell", i):
            st.write_cells(i, _run_cells(probe, spec, batch, groups, lambda p, s: sources[(p, s)]))
        done += 1
        tick()
    ds = assemble(spec, sites, groups, st)
    st.finalize(ds)
    return ds
