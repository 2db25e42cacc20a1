"""The experiment spec: a sweep over prompt pairs x sites x step windows x seeds (x heads), as data only.

:class:`Experiment` states a grid; it validates every field's type and range where it is built (a
notebook, ``Experiment.from_toml``, the CLI), so a wrong spec fails before a model is loaded. It knows
nothing of models or stores: :mod:`diffprobe.experiments` runs it, :mod:`diffprobe.results` stores it.

The intervention of a sweep is a *template*: an intervention mapping (``{"kind": "inject"}``,
``{"kind": "ablate", "mode": "empty"}``, ``{"kind": "scale", "factor": 0.0}``; see
:meth:`diffprobe.interventions.Intervention.to_dict`) without ``sites``, ``steps`` and ``heads``, which
each cell fills in from the grid. A Patch without ``source`` reads the pair's target prompt, an Inject
without ``prompt`` injects it: that is the paper's localization. A bare kind string is short for
``{"kind": ...}``.

Cell grid. With ``grouping="each"`` every selected site is patched alone (dim ``site``); with
``grouping="cumulative"`` the first k sites of ``sites`` are patched together for each k in
``counts`` (dim ``n_sites``): the "inject into 1, 2, 3, 10, all layers" trade-off of Table 5.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks
from .bench import PromptPair
from .errors import DiffprobeError, SpecError, did_you_mean

__all__ = ["Experiment", "GROUPINGS", "SWEEPABLE", "template_intervention"]

GROUPINGS = ("each", "cumulative")
#: intervention kinds a sweep can apply (Capture records, it does not edit)
SWEEPABLE = ("inject", "patch", "ablate", "scale")
_FILLED = ("sites", "steps", "heads")  # set per cell from the grid


def template_intervention(template: Mapping[str, Any], *, prompt: str, sites: Any, steps: Any, heads: Any):
    """The intervention a cell applies: the template with the cell's sites, steps and heads, and (for Patch
    and Inject without their own text) the pair's target ``prompt``."""
    from .interventions import from_dict

    fields = dict(template)
    if fields["kind"] == "patch":
        fields.setdefault("source", prompt)
    elif fields["kind"] == "inject":
        fields.setdefault("prompt", prompt)
    return from_dict({**fields, "sites": sites, "steps": steps, "heads": heads})


def _template(value) -> dict[str, Any]:
    if isinstance(value, str):
        value = {"kind": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"intervention must be a kind ({', '.join(SWEEPABLE)}) or a mapping such as "
                        f"{{'kind': 'ablate', 'mode': 'empty'}}; got {type(value).__name__} {value!r}.")
    value = dict(value)
    kind = value.get("kind")
    if kind not in SWEEPABLE:
        raise SpecError(f"intervention={kind!r} unknown; choose one of {SWEEPABLE}." + did_you_mean(str(kind), SWEEPABLE))
    filled = [k for k in _FILLED if k in value]
    if filled:
        raise SpecError(f"the intervention template sets {filled[0]!r}, which each cell takes from the spec "
                        f"(sites=..., t_starts=..., heads=...); remove it from the template.")
    try:  # build one cell's intervention now, so a bad field fails here and not mid-sweep
        template_intervention(value, prompt="x", sites="cross:all", steps=None, heads=None)
    except DiffprobeError as exc:
        raise SpecError(f"intervention template {value!r}: {exc}") from None
    return value


@dataclass(frozen=True)
class Experiment:
    """A sweep, as data. Round-trips through ``to_dict``/``from_dict``, JSON and TOML.

    Attributes:
        model: what :func:`diffprobe.load` takes ("glyph", a directory, a hub id).
        pairs: source/target prompt pairs (seeds of the pairs are ignored; ``seeds`` applies).
        intervention: the intervention template (see the module docstring); "inject" (cross sites, K/V from
            the target's embeddings), "patch" (any text site, K/V from a target run in the same batch),
            "ablate" or "scale" with their fields.
        sites: a site spec string (``"cross:all"``) or an ordered tuple of site labels/names.
        grouping: "each" (one site at a time) or "cumulative" (first k sites, k in ``counts``).
        t_starts: first patched loop index t_s of each step window [t_s, steps).
        heads: None (all heads) or head indices; with ``per_head`` each head is a cell of its own.
        seeds, steps, guidance, height, width: generation settings.
        metrics: metric names (see ``diffprobe.metrics.list_metrics()``).
        batch_size: variants per pipeline call (the unit of progress and of resume), or "auto": units of 64
            variants on a GPU (8 on the CPU), each run in the largest call that fits, found by halving on an
            out-of-memory error and retrying (nothing lost, nothing written twice; the size used is recorded).
        device, dtype: where the runner loads the model (see :func:`diffprobe.load`): "auto" or explicit.
        ocr_engine: the OCR engine of the text metrics: "tesseract" (default) or "easyocr" (the paper's).
        share_prefix: run the steps before a batch's first edited step once per distinct (prompt, seed) and
            replay them to the batch's other rows (default True; see docs/benchmarks.md for the saving and
            the tolerance against ``False``, which runs every row through every step).
        lora: a ``diffprobe finetune`` output folder: the runner loads the model with these peft LoRA adapters
            (``diffprobe.load(model, lora=...)``); with ``probe=`` the given probe is used as it is.
    """

    model: str = "glyph"
    pairs: tuple[PromptPair, ...] = ()
    intervention: Any = "inject"
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
    batch_size: int | str = 8
    clip_dir: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    ocr_engine: str = "tesseract"
    share_prefix: bool = True
    lora: str | None = None

    def __post_init__(self):
        for name, check in _FIELD_CHECKS.items():
            try:
                value = check(getattr(self, name))
            except DiffprobeError as exc:
                exc.field = exc.field or name
                raise
            object.__setattr__(self, name, value)  # frozen dataclass: normalised in place
        self._check_grid()

    def _check_grid(self) -> None:
        if self.grouping == "cumulative" and not self.counts:
            raise SpecError("grouping='cumulative' needs counts, e.g. counts=(1, 2, 3, 10).", field="counts")
        bad = [t for t in self.t_starts if not 0 <= t < self.steps]
        if bad:
            raise SpecError(
                f"t_starts={list(self.t_starts)}: each t_s must lie in [0, {self.steps}) for a {self.steps}-step run.",
                field="t_starts",
            )
        if self.per_head and not self.heads:
            raise SpecError("per_head=True needs heads=(...) to sweep.", field="per_head")

    @property
    def kind(self) -> str:
        """The intervention kind: inject, patch, ablate or scale."""
        return self.intervention["kind"]

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pairs"] = [p.to_dict() for p in self.pairs]
        d["intervention"] = dict(self.intervention)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Experiment":
        if not isinstance(data, Mapping):
            raise SpecError(f"an experiment spec is a mapping of fields; got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                raise SpecError(f"Unknown experiment field {key!r}.{did_you_mean(key, names)} Valid: {', '.join(names)}.")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Experiment":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise SpecError(f"Cannot read the experiment JSON: {exc}") from None

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({k: v for k, v in self.to_dict().items() if v is not None})

    @classmethod
    def from_toml(cls, source: str | Path) -> "Experiment":
        """From a TOML file (a Path, or a one-line string ending in .toml or naming a file) or from TOML text."""
        text = source if isinstance(source, str) else None
        is_file = isinstance(source, Path) or ("\n" not in source and (source.endswith(".toml") or Path(source).is_file()))
        if is_file:
            path = Path(source)
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise SpecError(f"No experiment file at {path}; pass the path of a TOML spec (see docs/experiments.md).") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise SpecError(f"Cannot read the experiment file {path}: {type(exc).__name__}: {exc}") from None
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            where = f" {source}" if is_file else ""
            raise SpecError(f"Cannot read the experiment TOML{where}: {exc}") from None

    def fingerprint(self) -> str:
        """A hash of everything that decides the results (the store is keyed by it)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def replace(self, **changes) -> "Experiment":
        names = [f.name for f in dataclasses.fields(self)]
        for key in changes:
            if key not in names:
                raise SpecError(f"Unknown experiment field {key!r}.{did_you_mean(key, names)}")
        return dataclasses.replace(self, **changes)


def _sequence(value, what: str) -> Sequence:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise SpecError(f"{what} must be a list; got {type(value).__name__} {value!r}.")
    return value


def _pairs(pairs) -> tuple[PromptPair, ...]:
    pairs = _sequence(pairs, "pairs")
    out = tuple(p if isinstance(p, PromptPair) else PromptPair.from_dict(p) for p in pairs)
    if not out:
        raise SpecError("The experiment has no prompt pairs; pass pairs=[PromptPair(...)] or --bench/--pairs.")
    return out


def _sites(sites) -> str | tuple[str, ...]:
    if isinstance(sites, str):
        return checks.text(sites, "sites", SpecError, allow_empty=False)
    labels = tuple(checks.text(s, "sites entry", SpecError, allow_empty=False) for s in _sequence(sites, "sites"))
    if not labels:
        raise SpecError("sites is empty; name at least one site, e.g. sites='cross:all'.")
    checks.unique(labels, "sites", SpecError)
    return labels


def _metrics(metrics) -> tuple[str, ...]:
    from .metrics import DEFAULT_METRICS, validate

    names = tuple(_sequence(metrics, "metrics"))
    if not names:
        return tuple(DEFAULT_METRICS)
    for m in names:
        checks.text(m, "metrics entry", SpecError)
    return tuple(validate(list(names)))


def _optional(check):
    return lambda value: None if value is None else check(value)


def _grouping(value) -> str:
    if not isinstance(value, str) or value not in GROUPINGS:
        raise SpecError(f"grouping={value!r} unknown; choose 'each' or 'cumulative'.")
    return value


def _flag(name: str):
    def check(value) -> bool:
        if not isinstance(value, bool):
            raise SpecError(f"{name} must be true or false; got {value!r}.")
        return value

    return check


def _seeds(values) -> tuple[int, ...]:
    out = tuple(checks.seed(s, "seeds entry", SpecError) for s in _sequence(values, "seeds"))
    if not out:
        raise SpecError("seeds is empty; pass at least one seed, e.g. seeds=(0,).")
    checks.unique(out, "seeds", SpecError)
    return out


def _batch_size(value) -> int | str:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str):
        raise SpecError(f"batch_size={value!r}: give a positive integer or 'auto'.")
    return checks.integer(value, "batch_size", SpecError, lo=1)


def _dtype(value) -> str:
    from .devices import DTYPES

    name = checks.text(value, "dtype", SpecError, allow_empty=False).strip().lower().removeprefix("torch.")
    if name != "auto" and name not in DTYPES:
        raise SpecError(f"dtype={value!r} unknown; use 'auto', 'float32', 'float16' or 'bfloat16'."
                        + did_you_mean(name, DTYPES))
    return "auto" if name == "auto" else str(DTYPES[name]).removeprefix("torch.")


def _ocr_engine(value) -> str:
    from .metrics import OCR_ENGINES

    name = checks.text(value, "ocr_engine", SpecError, allow_empty=False).strip().lower()
    if name not in OCR_ENGINES:
        raise SpecError(f"ocr_engine={value!r} unknown; choose one of {', '.join(OCR_ENGINES)}."
                        + did_you_mean(name, OCR_ENGINES))
    return name


#: each field's check, in declaration order; each returns the normalised value or raises a SpecError
_FIELD_CHECKS = {
    "model": lambda v: checks.text(v, "model", SpecError, allow_empty=False),
    "pairs": _pairs,
    "intervention": _template,
    "sites": _sites,
    "grouping": _grouping,
    "counts": lambda v: checks.int_list(v, "counts", SpecError, lo=1, allow_empty=True),
    "t_starts": lambda v: checks.int_list(v, "t_starts", SpecError),
    "heads": _optional(lambda v: checks.int_list(v, "heads", SpecError, lo=0)),
    "per_head": _flag("per_head"),
    "seeds": _seeds,
    "steps": lambda v: checks.integer(v, "steps", SpecError, lo=1),
    "guidance": _optional(lambda v: checks.number(v, "guidance", SpecError, lo=0.0)),
    "height": _optional(lambda v: checks.integer(v, "height", SpecError, lo=8)),
    "width": _optional(lambda v: checks.integer(v, "width", SpecError, lo=8)),
    "metrics": _metrics,
    "batch_size": _batch_size,
    "clip_dir": _optional(lambda v: checks.text(v, "clip_dir", SpecError, allow_empty=False)),
    "device": lambda v: checks.text(v, "device", SpecError, allow_empty=False).strip().lower(),
    "dtype": _dtype,
    "ocr_engine": _ocr_engine,
    "share_prefix": _flag("share_prefix"),
    "lora": _optional(lambda v: checks.text(v, "lora", SpecError, allow_empty=False)),
}
