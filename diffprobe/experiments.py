"""Experiments: declarative sweeps over prompt pairs x sites x step windows x seeds (x heads).

The paper's localization method is one loop: for each source/target prompt pair, generate the
source prompt while one attention site reads the target's text keys/values from step ``t_s`` on,
and score the image by OCR against both texts (did the word change?) and against the unpatched
source image (did anything else change?). :class:`Experiment` states such a grid as data; one
runner, :func:`run`, executes any grid in batches through the interventions engine, scores each
batch, and writes it to a store as it goes (see :mod:`diffprobe.results`). The named sweeps
(:func:`layer_sweep`, :func:`timestep_sweep`, :func:`layer_count_sweep`) only fill in a spec.

Cell grid. With ``grouping="each"`` every selected site is patched alone (dim ``site``); with
``grouping="cumulative"`` the first k sites of ``sites`` are patched together for each k in
``counts`` (dim ``n_sites``): the "inject into 1, 2, 3, 10, all layers" trade-off of Table 5.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import PromptPair
from .errors import SiteError, SpecError, did_you_mean

__all__ = ["Experiment", "INTERVENTIONS", "run", "layer_sweep", "timestep_sweep", "layer_count_sweep",
           "count_follow_up"]

INTERVENTIONS = ("inject", "patch", "ablate")
GROUPINGS = ("each", "cumulative")


@dataclass(frozen=True)
class Experiment:
    """A sweep, as data. Round-trips through ``to_dict``/``from_dict``, JSON and TOML.

    Attributes:
        model: what :func:`diffprobe.load` takes ("glyph", a directory, a hub id).
        pairs: source/target prompt pairs (seeds of the pairs are ignored; ``seeds`` applies).
        intervention: "inject" (cross sites, K/V from the target's embeddings), "patch" (any text
            site, K/V from a target run in the same batch) or "ablate" (``ablate_mode``).
        sites: a site spec string (``"cross:all"``) or an ordered tuple of site labels/names.
        grouping: "each" (one site at a time) or "cumulative" (first k sites, k in ``counts``).
        t_starts: first patched loop index t_s of each step window [t_s, steps).
        heads: None (all heads) or head indices; with ``per_head`` each head is a cell of its own.
        seeds, steps, guidance, height, width: generation settings.
        metrics: metric names (see ``diffprobe.metrics.list_metrics()``).
        batch_size: variants per pipeline call (the unit of progress and of resume).
    """

    model: str = "glyph"
    pairs: tuple[PromptPair, ...] = ()
    intervention: str = "inject"
    sites: str | tuple[str, ...] = "cross:all"
    grouping: str = "each"
    counts: tuple[int, ...] = ()
    t_starts: tuple[int, ...] = (0,)
    heads: tuple[int, ...] | None = None
    per_head: bool = False
    seeds: tuple[int, ...] = (0,)
    steps: int = 25
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    metrics: tuple[str, ...] = ()
    ablate_mode: str = "zero"
    batch_size: int = 8
    clip_dir: str | None = None

    def __post_init__(self):
        pairs = tuple(p if isinstance(p, PromptPair) else PromptPair.from_dict(dict(p)) for p in self.pairs)
        object.__setattr__(self, "pairs", pairs)
        if not isinstance(self.sites, str):
            object.__setattr__(self, "sites", tuple(self.sites))
        for name in ("counts", "t_starts", "seeds", "metrics"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(int(h) for h in self.heads))
        if not self.metrics:
            from .metrics import DEFAULT_METRICS

            object.__setattr__(self, "metrics", tuple(DEFAULT_METRICS))
        self._validate()

    def _validate(self) -> None:
        if not self.pairs:
            raise SpecError("The experiment has no prompt pairs; pass pairs=[PromptPair(...)] or --bench/--pairs.")
        if self.intervention not in INTERVENTIONS:
            raise SpecError(
                f"intervention={self.intervention!r} unknown; choose one of {INTERVENTIONS}."
                + did_you_mean(self.intervention, INTERVENTIONS)
            )
        if self.grouping not in GROUPINGS:
            raise SpecError(f"grouping={self.grouping!r} unknown; choose 'each' or 'cumulative'.")
        if self.grouping == "cumulative" and (not self.counts or min(self.counts) < 1):
            raise SpecError("grouping='cumulative' needs counts, e.g. counts=(1, 2, 3, 10).")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise SpecError(f"steps={self.steps!r} must be a positive integer.")
        bad = [t for t in self.t_starts if not 0 <= int(t) < self.steps]
        if not self.t_starts or bad:
            raise SpecError(
                f"t_starts={list(self.t_starts)}: each t_s must lie in [0, {self.steps}) for a {self.steps}-step run."
            )
        if not self.seeds:
            raise SpecError("seeds is empty; pass at least one seed, e.g. seeds=(0,).")
        if self.batch_size < 1:
            raise SpecError(f"batch_size={self.batch_size} must be at least 1.")
        if self.per_head and not self.heads:
            raise SpecError("per_head=True needs heads=(...) to sweep.")
        if self.intervention == "ablate" and self.ablate_mode not in ("zero", "empty"):
            raise SpecError(f"ablate_mode={self.ablate_mode!r}: sweeps support 'zero' or 'empty'.")
        from .metrics import validate

        validate(list(self.metrics))

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pairs"] = [p.to_dict() for p in self.pairs]
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Experiment":
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise SpecError(f"Unknown experiment field {key!r}.{did_you_mean(key, names)} Valid: {', '.join(names)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        return cls.from_dict(json.loads(text))

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    @classmethod
    def from_toml(cls, source: str | Path) -> "Experiment":
        """From a TOML file (a Path, or a string naming an existing file) or from TOML text."""
        is_file = isinstance(source, Path) or ("\n" not in source and Path(source).is_file())
        text = Path(source).read_text() if is_file else source
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            where = f" {source}" if is_file else ""
            raise SpecError(f"Cannot read the experiment TOML{where}: {exc}") from None

    def fingerprint(self) -> str:
        """A hash of everything that decides the results (the store is keyed by it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **changes) -> "Experiment":
        return dataclasses.replace(self, **changes)


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
    ranked = tuple(str(v) for v in ds.dp.best_sites(metric, k=ds.sizes["site"]).site_label.values)
    counts = tuple(sorted({k for k in (1, 2, 3, 5, len(ranked)) if k <= len(ranked)}))
    return spec.replace(sites=ranked, grouping="cumulative", counts=counts, t_starts=(0,))


def run(spec: Experiment, *, probe=None, store: str | Path | None = None,
        progress: Callable[[int, int], None] | None = None):
    """Run (or resume) an experiment; returns its results as an ``xarray.Dataset``."""
    from .runner import run_experiment

    return run_experiment(spec, probe=probe, store=store, progress=progress)


def resolve_sites(spec: Experiment, catalogue) -> list:
    """The spec's site list against a model's catalogue, as SpecErrors that name the mismatch."""
    try:
        if isinstance(spec.sites, str):
            sites = list(catalogue.parse(spec.sites))
        else:
            sites = [_one_site(catalogue, s) for s in spec.sites]
    except SiteError as exc:
        raise SpecError(f"The spec's sites do not match the model: {exc}") from None
    textless = [s for s in sites if not s.carries_text]
    if textless:
        raise SpecError(
            f"The spec selects {textless[0].label} ({textless[0].name}), a self-attention site with no text K/V; "
            f"sweep text sites instead, e.g. sites='{_text_kind(catalogue)}:all'."
        )
    if spec.intervention == "inject" and any(s.kind != "cross" for s in sites):
        raise SpecError(
            f"intervention='inject' needs cross-attention sites, but {sites[0].kind} sites were selected; "
            "use intervention='patch' for joint/single attention (SD3, FLUX)."
        )
    if spec.grouping == "cumulative" and max(spec.counts) > len(sites):
        raise SpecError(f"counts go up to {max(spec.counts)} but only {len(sites)} sites are selected.")
    return sites


def _one_site(catalogue, label: str):
    """A site by label (``cross:55``) or module name; errors name the valid choices."""
    if ":" in label:
        return catalogue.parse(label)[0]
    return catalogue.by_name(label)


def _text_kind(catalogue) -> str:
    return next((k for k in catalogue.kinds if k != "self"), "cross")
