"""Planning: turn (variant, interventions) into per-site, per-step row operations.

A batched run is a list of *rows*: one per variant the user asked for, plus one hidden clean row
for every Patch source that is not already a clean variant. The denoiser sees these rows twice
under classifier-free guidance ([uncond rows..., cond rows...]); an operation names a row and the
CFG halves it applies to, and the engine maps that onto the tensor it meets at run time.
Planning validates everything against the model's catalogue and the run's step count before the
first denoising step, so a bad request fails in milliseconds with a message, not mid-run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Union

from . import checks
from .errors import InterventionError
from .interventions import (
    Ablate, AttentionMap, Capture, Inject, Intervention, Patch, ReplaceAttention, Scale, resolve_steps,
)
from .sites import Site, SiteCatalogue

__all__ = ["Variant", "interventions_tuple", "Row", "FromRow", "FromTensor", "Zeros", "KvOp", "capture_name", "OutOp", "CapOp", "MapOp", "SitePlan", "Plan", "make_plan"]


def interventions_tuple(interventions) -> tuple[Intervention, ...]:
    """A list of interventions as a tuple; a single intervention or a non-intervention entry is refused."""
    if isinstance(interventions, Intervention):
        raise InterventionError(
            f"interventions must be a list; got a single {interventions.describe()}: write [{type(interventions).__name__}(...)]."
        )
    if isinstance(interventions, (str, bytes)) or not isinstance(interventions, Sequence):
        raise InterventionError(f"interventions must be a list of Patch/Inject/Ablate/Scale/Capture; got "
                                f"{type(interventions).__name__} {interventions!r}.")
    for i, iv in enumerate(interventions):
        if not isinstance(iv, Intervention):
            raise InterventionError(
                f"interventions[{i}] is a {type(iv).__name__} ({iv!r}), not an intervention; build one, e.g. "
                "Inject(prompt=..., sites='cross:3')."
            )
    return tuple(interventions)


@dataclass(frozen=True)
class Variant:
    """One image to produce: a prompt, a seed, and the interventions applied while it denoises."""

    prompt: str
    interventions: tuple[Intervention, ...] = ()
    seed: int = 0
    negative_prompt: str = ""

    def __post_init__(self):
        checks.text(self.prompt, "the prompt", InterventionError)
        checks.text(self.negative_prompt, "negative_prompt", InterventionError)
        object.__setattr__(self, "seed", checks.seed(self.seed, "seed", InterventionError))
        object.__setattr__(self, "interventions", interventions_tuple(self.interventions))

    @property
    def clean(self) -> bool:
        return all(isinstance(i, (Capture, AttentionMap)) for i in self.interventions)


@dataclass(frozen=True)
class Row:
    prompt: str
    seed: int
    negative_prompt: str


@dataclass(frozen=True)
class FromRow:
    """K/V copied from another row of the same batch at the same site and step (Patch)."""

    row: int


@dataclass(frozen=True)
class FromTensor:
    """K/V precomputed from prompt embeddings before the run (Inject, Ablate mean/empty); ``key`` names them."""

    key: tuple


@dataclass(frozen=True)
class Zeros:
    """All-zero K/V (Ablate zero)."""


KvSource = Union[FromRow, FromTensor, Zeros]


@dataclass(frozen=True)
class KvOp:
    """Replace the text K/V of ``row`` (in ``halves``) at ``steps`` with ``source``'s."""

    row: int
    steps: frozenset[int]
    halves: tuple[str, ...]
    heads: tuple[int, ...] | None
    source: KvSource


@dataclass(frozen=True)
class OutOp:
    row: int
    steps: frozenset[int]
    halves: tuple[str, ...]
    heads: tuple[int, ...] | None
    factor: float


@dataclass(frozen=True)
class CapOp:
    """Record ``what`` ("output", "kv" or "denoiser") of ``row`` at ``steps`` under ``name``."""

    row: int
    variant: int
    steps: tuple[int, ...]
    half: str
    what: str
    name: str

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names the captured arrays get: ``<name>:k`` and ``<name>:v`` for K/V, else ``<name>``."""
        return (f"{self.name}:k", f"{self.name}:v") if self.what == "kv" else (self.name,)


@dataclass(frozen=True)
class MapOp:
    """Attention probabilities (image queries x text keys) of ``row`` in ``half`` at ``steps``: accumulated under
    ``name`` (AttentionMap), or, with ``source``, used to replace those of the source row (ReplaceAttention)."""

    row: int
    variant: int
    steps: frozenset[int]
    halves: tuple[str, ...]
    heads: tuple[int, ...] | None
    name: str | None = None
    reduce: str = "mean"
    per_step: bool = False
    source: FromRow | None = None


def capture_name(iv: Capture, site: Site | None, n_sites: int) -> str:
    """The one place capture names are made: ``output:cross:3``, ``kv:joint:1``, ``denoiser`` or the user's
    ``name`` (suffixed with the site label when the capture spans several sites)."""
    if site is None:
        return iv.name or "denoiser"
    if iv.name is None:
        return f"{iv.what}:{site.label}"
    return f"{iv.name}:{site.label}" if n_sites > 1 else iv.name


@dataclass
class SitePlan:
    site: Site | None  # None: the denoiser itself (captures only)
    kv: list[KvOp] = field(default_factory=list)
    out: list[OutOp] = field(default_factory=list)
    cap: list[CapOp] = field(default_factory=list)
    attn: list[MapOp] = field(default_factory=list)

    def kv_at(self, step: int) -> list[KvOp]:
        return [op for op in self.kv if step in op.steps]

    def out_at(self, step: int) -> list[OutOp]:
        return [op for op in self.out if step in op.steps]

    def cap_at(self, step: int, what: str) -> list[CapOp]:
        return [op for op in self.cap if step in op.steps and op.what == what]

    def attn_at(self, step: int) -> list[MapOp]:
        return [op for op in self.attn if step in op.steps]

    @property
    def steps(self) -> set[int]:
        s: set[int] = set()
        for op in (*self.kv, *self.out):
            s |= op.steps
        for op in self.cap:
            s |= set(op.steps)
        for op in self.attn:
            s |= op.steps
        return s


@dataclass
class Plan:
    rows: list[Row]
    n_variants: int
    n_steps: int
    sites: list[SitePlan]  # in execution order; the denoiser plan (if any) last
    injections: dict[tuple, tuple[str, str, tuple[str, ...]]]  # key -> (prompt, negative, mean_prompts)

    @property
    def steps(self) -> list[int]:
        s: set[int] = set()
        for sp in self.sites:
            s |= sp.steps
        return sorted(s)


def _halves(policy: str) -> tuple[str, ...]:
    return ("uncond", "cond") if policy == "both" else (policy,)


def _select(catalogue: SiteCatalogue, spec, owner: str) -> list[Site]:
    if isinstance(spec, Site):
        return [spec]
    if isinstance(spec, str) or (isinstance(spec, Sequence) and all(isinstance(s, str) for s in spec)):
        return list(catalogue.parse(spec))
    if isinstance(spec, SiteCatalogue) or isinstance(spec, Sequence):
        sites = list(spec)
        if not sites:
            raise InterventionError(f"{owner}: the site list is empty; name at least one site, e.g. 'cross:0'.")
        for s in sites:
            if not isinstance(s, Site) or s not in catalogue:
                raise InterventionError(f"{owner}: {s!r} is not a site of this model; use probe.sites to choose.")
        return sites
    raise InterventionError(f"{owner}: cannot read sites={spec!r}; pass a string such as 'cross:3' or Site objects.")


def _check_heads(iv: Intervention, site: Site, owner: str) -> None:
    if iv.heads is None:
        return
    bad = [h for h in iv.heads if h >= site.heads]
    if bad:
        raise InterventionError(
            f"{owner}: head {bad[0]} is out of range at {site.label} ({site.name}), which has "
            f"{site.heads} heads: valid heads are 0-{site.heads - 1}.", field="heads"
        )


def _check_kv_site(iv: Intervention, site: Site, owner: str, supports_inject: bool) -> None:
    if not site.carries_text:
        raise InterventionError(
            f"{owner}: {site.label} ({site.name}) is a self-attention site and carries no text keys/values; "
            "choose cross, joint or single sites (e.g. 'cross:all'), or use Scale/Ablate(target='output')."
        )
    needs_encoder = isinstance(iv, Inject) or (isinstance(iv, Ablate) and iv.mode in ("mean", "empty"))
    if needs_encoder and site.kind != "cross":
        raise InterventionError(
            f"{owner}: cannot compute K/V from prompt embeddings at {site.label} ({site.name}): "
            f"{site.kind} attention reads a text stream that changes from block to block. "
            "Use Patch(source=<prompt>) instead, which runs that prompt in the same batch."
        )
    if needs_encoder and not supports_inject:
        raise InterventionError(
            f"{owner}: computing K/V from prompt embeddings is not implemented for this architecture's "
            f"cross-attention ({site.label}, {site.name}): its text passes through the denoiser's own caption "
            "projection and attention mask first. Use Patch(source=<prompt>) instead."
        )


def make_plan(
    variants: Sequence[Variant], catalogue: SiteCatalogue, n_steps: int, *, supports_inject: bool = True
) -> Plan:
    """Validate the variants' interventions against the catalogue and lay out rows and operations."""
    if not variants:
        raise InterventionError("Nothing to run: pass at least one prompt or variant.")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise InterventionError(f"steps={n_steps!r}: the number of denoising steps must be a positive integer.")
    rows = [Row(v.prompt, v.seed, v.negative_prompt) for v in variants]
    clean_rows = {rows[i]: i for i, v in enumerate(variants) if v.clean}
    by_site: dict[str, SitePlan] = {}
    denoiser_plan = SitePlan(site=None)
    injections: dict[tuple, tuple[str, str, tuple[str, ...]]] = {}

    def clean_row(prompt: str, v: Variant) -> int:
        key = Row(prompt, v.seed, v.negative_prompt)
        if key not in clean_rows:
            clean_rows[key] = len(rows)
            rows.append(key)
        return clean_rows[key]

    for vi, v in enumerate(variants):
        for ii, iv in enumerate(v.interventions):
            owner = f"{iv.describe()} (variant {vi}, intervention {ii})"
            steps = frozenset(resolve_steps(iv.steps, n_steps, owner))
            if isinstance(iv, Capture) and iv.sites == "denoiser":
                denoiser_plan.cap.append(
                    CapOp(vi, vi, tuple(sorted(steps)), iv.cfg, "denoiser", capture_name(iv, None, 0))
                )
                continue
            sites = _select(catalogue, iv.sites, owner)
            for site in sites:
                _check_heads(iv, site, owner)
                plan = by_site.setdefault(site.name, SitePlan(site=site))
                heads = tuple(iv.heads) if iv.heads is not None else None
                if iv.edits_kv:
                    _check_kv_site(iv, site, owner, supports_inject)
                    plan.kv.append(KvOp(vi, steps, _halves(iv.cfg), heads, _kv_source(iv, v, clean_row, injections)))
                elif isinstance(iv, (Scale, Ablate)):
                    factor = 0.0 if isinstance(iv, Ablate) else float(iv.factor)
                    plan.out.append(OutOp(vi, steps, _halves(iv.cfg), heads, factor))
                elif isinstance(iv, (AttentionMap, ReplaceAttention)):
                    plan.attn.append(_map_op(iv, vi, v, site, owner, steps, heads, clean_row, len(sites)))
                elif isinstance(iv, Capture):
                    if iv.what == "kv" and not site.carries_text:
                        raise InterventionError(
                            f"{owner}: {site.label} carries no text K/V to capture; use what='output'."
                        )
                    name = capture_name(iv, site, len(sites))
                    plan.cap.append(CapOp(vi, vi, tuple(sorted(steps)), iv.cfg, iv.what, name))
                else:  # pragma: no cover - every intervention type is handled above
                    raise InterventionError(f"{owner}: unknown intervention type {type(iv).__name__}.")

    order = {s.name: i for i, s in enumerate(catalogue)}
    site_plans = sorted(by_site.values(), key=lambda p: order[p.site.name])
    if denoiser_plan.cap:
        site_plans.append(denoiser_plan)
    return Plan(rows, len(variants), n_steps, site_plans, injections)


def _map_op(iv, vi: int, v: Variant, site: Site, owner: str, steps, heads, clean_row, n_sites: int) -> MapOp:
    """An attention-map op; refuses sites without text keys, and (ReplaceAttention) sites whose keys are not text only."""
    if not site.carries_text:
        raise InterventionError(
            f"{owner}: {site.label} ({site.name}) is a self-attention site: it has no text keys to map; choose "
            "cross, joint or single sites (e.g. 'cross:all').", field="sites")
    if isinstance(iv, AttentionMap):
        return MapOp(vi, vi, steps, _halves(iv.cfg), heads, iv.name or "attention", iv.reduce, iv.per_step)
    if site.kind != "cross" or site.kv[0] != "to_k":
        raise InterventionError(
            f"{owner}: {site.label} ({site.name}) attends to image and text keys together; prompt-to-prompt "
            "replaces cross-attention maps whose keys are text only (plain cross sites).", field="sites")
    return MapOp(vi, vi, steps, _halves(iv.cfg), heads, source=FromRow(clean_row(iv.source, v)))


def _kv_source(iv: Intervention, v: Variant, clean_row, injections: dict) -> KvSource:
    if isinstance(iv, Patch):
        return FromRow(clean_row(iv.source, v))
    if isinstance(iv, Inject):
        neg = v.negative_prompt if iv.negative_prompt is None else iv.negative_prompt
        key = ("inject", iv.prompt, neg)
        injections[key] = (iv.prompt, neg, ())
        return FromTensor(key)
    if not isinstance(iv, Ablate):
        raise InterventionError(f"{iv.describe()} does not edit K/V.")
    if iv.mode == "zero":
        return Zeros()
    if iv.mode == "empty":
        key = ("inject", "", v.negative_prompt)
        injections[key] = ("", v.negative_prompt, ())
        return FromTensor(key)
    key = ("mean", iv.prompts, v.negative_prompt)
    injections[key] = ("", v.negative_prompt, tuple(iv.prompts))
    return FromTensor(key)
