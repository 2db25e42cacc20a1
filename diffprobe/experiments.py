"""Experiments: run a sweep over prompt pairs x sites x step windows x seeds (x heads).

The paper's localization method is one loop: for each source/target prompt pair, generate the
source prompt while one attention site reads the target's text keys/values from step ``t_s`` on,
and score the image by OCR against both texts (did the word change?) and against the unpatched
source image (did anything else change?). :class:`~diffprobe.spec.Experiment` states such a grid as
data; one runner, :func:`run` (:mod:`diffprobe.runner`), executes any grid in batches through the
interventions engine, scores each batch, and writes it to a store as it goes (see
:mod:`diffprobe.results`). The named sweeps (:func:`layer_sweep`, :func:`timestep_sweep`,
:func:`layer_count_sweep`) only fill in a spec.

Import direction: ``spec`` (data) <- ``results`` (store, dataset) <- ``runner`` <- ``experiments``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench import PromptPair
from .runner import run_experiment
from .spec import Experiment

__all__ = ["Experiment", "run", "layer_sweep", "timestep_sweep", "layer_count_sweep", "count_follow_up"]


# -- named entry points: thin wrappers over the one runner ---------------------------------------

def layer_sweep(probe, pairs: Sequence[PromptPair], *, sites: str = "cross:all", t_start: int = 0,
                store: str | Path | None = None, **settings) -> Any:
    """Each site alone, from step ``t_start`` on (the paper's Figure 2/6 localization sweep)."""
    spec = Experiment(model=probe.name, pairs=tuple(pairs), sites=sites, t_starts=(t_start,), **settings)
    return run(spec, probe=probe, store=store)


def timestep_sweep(probe, pairs: Sequence[PromptPair], *, sites: str, t_starts: Sequence[int],
                   store: str | Path | None = None, **settings) -> Any:
    """The given sites over several step windows [t_s, N)."""
    spec = Experiment(model=probe.name, pairs=tuple(pairs), sites=sites, t_starts=tuple(t_starts), **settings)
    return run(spec, probe=probe, store=store)


def layer_count_sweep(probe, pairs: Sequence[PromptPair], *, sites: Sequence[str], counts: Sequence[int],
                      t_start: int = 0, store: str | Path | None = None, **settings) -> Any:
    """The first k of an ordered site list together, for each k (text edit vs image kept, Table 5)."""
    spec = Experiment(model=probe.name, pairs=tuple(pairs), sites=tuple(sites), grouping="cumulative",
                      counts=tuple(counts), t_starts=(t_start,), **settings)
    return run(spec, probe=probe, store=store)


def count_follow_up(spec: Experiment, ds, metric: str = "ocr_f1_target") -> Experiment:
    """The layer-count follow-up of a layer sweep: its sites ranked by ``metric`` (best first), injected
    together as the top 1, 2, 3, 5 and all of them, from step 0; everything else as in ``spec``."""
    from .ranking import rank_sites

    ranked = tuple(s.label for s in rank_sites(ds, metric))
    counts = tuple(sorted({k for k in (1, 2, 3, 5, len(ranked)) if k <= len(ranked)}))
    return spec.replace(sites=ranked, grouping="cumulative", counts=counts, t_starts=(0,))


def run(spec: Experiment, *, probe=None, store: str | Path | None = None,
        progress: Callable[[int, int], None] | None = None, client=None):
    """Run (or resume) an experiment; returns its results as an ``xarray.Dataset``.

    ``client``: a dask.distributed client to run the batches on its workers (see :mod:`diffprobe.cluster`)."""
    executor = None
    if client is not None:
        from .cluster import DaskExecutor

        executor = DaskExecutor(client, spec)
    return run_experiment(spec, probe=probe, store=store, progress=progress, executor=executor)
