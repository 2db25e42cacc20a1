"""What diffprobe can do to a site: frozen, composable intervention specs.

An intervention names *what* happens (replace the text keys/values, scale the output, save a
tensor), *where* (a site selection: a :class:`~diffprobe.sites.SiteCatalogue` slice, a list of
sites, or a string such as ``"cross:55-57"``), *which heads* (``None`` = all) and *when* (a window
of 0-based denoising-loop indices). They are plain data: validation against a particular model
(does the site exist? is head 9 in range? is step 40 inside a 28-step run?) happens when the
engine plans a run, so one intervention list can be reused across models and step counts.

Why text keys/values: in cross-attention (and in IF's added-KV attention) the keys and values are
linear projections of the prompt embedding alone, so replacing them with those computed from
another prompt is exactly "this layer reads another prompt" while the queries (the image) and
everything else stay put. In joint attention (SD3, FLUX) the text stream is rewritten block by
block, so the faithful replacement is the K/V that the *same block* computes in a run on the other
prompt -- that is :class:`Patch`, which runs the source prompt as an extra row of the same batch.

Steps follow the paper's ``t_s``: ``steps="4:"`` (or ``range(4, N)``) patches loop indices
``4..N-1``; ``None`` means every step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from . import checks
from .errors import InterventionError, did_you_mean

__all__ = [
    "Intervention",
    "Patch",
    "Inject",
    "Ablate",
    "Scale",
    "Capture",
    "AttentionMap",
    "ReplaceAttention",
    "resolve_steps",
    "CFG_POLICIES",
    "KINDS",
    "from_dict",
]

CFG_POLICIES = ("both", "cond", "uncond")

SiteSpec = Union[str, Sequence, None]
StepSpec = Union[str, int, range, Sequence[int], None]


def _freeze(value):
    if value is None or isinstance(value, (str, range)):
        return value
    if isinstance(value, int):
        return value
    if hasattr(value, "__iter__"):
        return tuple(value)
    return value


@dataclass(frozen=True)
class Intervention:
    """Common fields: where (sites), which heads, when (steps) and which CFG half."""

    sites: SiteSpec = field(default="cross:all", kw_only=True)
    heads: Sequence[int] | None = field(default=None, kw_only=True)
    steps: StepSpec = field(default=None, kw_only=True)
    cfg: Literal["both", "cond", "uncond"] = field(default="both", kw_only=True)

    def __post_init__(self):
        owner = type(self).__name__
        _check_sites(self.sites, owner)
        _check_steps(self.steps, owner)
        object.__setattr__(self, "sites", _freeze(self.sites))
        object.__setattr__(self, "steps", _freeze(self.steps))
        if not isinstance(self.cfg, str) or self.cfg not in CFG_POLICIES:
            raise InterventionError(f"{owner}: cfg={self.cfg!r} is not a CFG policy; choose one of {CFG_POLICIES}.")
        if self.heads is not None:
            heads = checks.int_list(self.heads, f"{owner}: heads", InterventionError, lo=0)
            object.__setattr__(self, "heads", heads)
        if isinstance(self.sites, tuple) and len(self.sites) == 0:
            raise InterventionError(
                f"{owner} has an empty site list; name at least one site, e.g. sites='cross:0'."
            )

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": "patch", "source": ..., "sites": ..., ...}``: JSON/TOML-ready; :func:`from_dict` reads it back.
        Site objects are written as their labels; a ``range`` of steps as a list."""
        out: dict[str, Any] = {"kind": type(self).__name__.lower()}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, range):
                value = list(value)
            elif isinstance(value, tuple):
                value = [getattr(v, "label", v) for v in value]
            elif hasattr(value, "label"):
                value = value.label
            out[f.name] = value
        return out

    @property
    def edits_kv(self) -> bool:
        return False

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Patch(Intervention):
    """Replace a site's text K/V with those it computes when the pipeline runs on ``source``.

    The source run is an extra row of the same batched call (same seed, same step), so this works
    for every site kind: cross (``to_k``/``to_v``), added-KV and joint (``add_k_proj``/``add_v_proj``),
    FLUX single-stream (the text-token prefix of ``to_k``/``to_v``).
    """

    source: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.source is None:
            raise InterventionError(
                "Patch needs source=<prompt>: the prompt whose run the sites read their K/V from "
                "(for the empty prompt, say source='' explicitly)."
            )
        checks.text(self.source, "Patch.source", InterventionError)

    @property
    def edits_kv(self) -> bool:
        return True

    def describe(self) -> str:
        return f"Patch(source={self.source!r})"


@dataclass(frozen=True)
class Inject(Intervention):
    """Compute a cross/added-KV site's K/V from ``prompt``'s embeddings (no extra denoiser run).

    The unconditional half gets K/V from ``negative_prompt``'s embeddings (the run's own negative
    prompt when None). Joint and single sites are rejected: their text stream depends on the block
    (use :class:`Patch`).
    """

    prompt: str | None = None
    negative_prompt: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.prompt is None:
            raise InterventionError(
                "Inject needs prompt=<prompt>: the prompt whose embeddings the sites' K/V are computed from "
                "(for the empty prompt, say prompt='' explicitly, or use Ablate(mode='empty'))."
            )
        checks.text(self.prompt, "Inject.prompt", InterventionError)
        if self.negative_prompt is not None:
            checks.text(self.negative_prompt, "Inject.negative_prompt", InterventionError)

    @property
    def edits_kv(self) -> bool:
        return True

    def describe(self) -> str:
        return f"Inject(prompt={self.prompt!r})"


@dataclass(frozen=True)
class Ablate(Intervention):
    """Knock out what a site reads from the text.

    ``mode="zero"``: zero the text K/V (``target="kv"``) or the attention output (``target="output"``);
    ``mode="mean"``: K/V computed from the mean embedding over ``prompts`` (cross sites);
    ``mode="empty"``: K/V of the empty prompt (cross sites).
    """

    mode: Literal["zero", "mean", "empty"] = "zero"
    target: Literal["kv", "output"] = "kv"
    prompts: Sequence[str] = ()

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.prompts, str) or not isinstance(self.prompts, Sequence):
            raise InterventionError(f"Ablate.prompts must be a list of prompts; got {type(self.prompts).__name__}.")
        object.__setattr__(self, "prompts", tuple(checks.text(p, "Ablate.prompts entry", InterventionError)
                                                  for p in self.prompts))
        if self.mode not in ("zero", "mean", "empty"):
            raise InterventionError(f"Ablate mode={self.mode!r} unknown; choose 'zero', 'mean' or 'empty'.")
        if self.target not in ("kv", "output"):
            raise InterventionError(f"Ablate target={self.target!r} unknown; choose 'kv' or 'output'.")
        if self.mode == "mean" and not self.prompts:
            raise InterventionError("Ablate(mode='mean') needs prompts=[...] to average over.")
        if self.target == "output" and self.mode != "zero":
            raise InterventionError("Ablate(target='output') supports mode='zero' only; use target='kv'.")

    @property
    def edits_kv(self) -> bool:
        return self.target == "kv"

    def describe(self) -> str:
        return f"Ablate(mode={self.mode!r}, target={self.target!r})"


@dataclass(frozen=True)
class Scale(Intervention):
    """Multiply a site's attention output by ``factor`` (steering strength; 1.0 is the identity).

    Without ``heads`` the site's image-stream output is scaled (joint sites keep their text stream);
    with ``heads`` only those heads' contribution is, i.e. their slice of the per-head attention result
    before the output projection ``to_out.0``.
    """

    factor: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "factor", checks.number(self.factor, "Scale.factor", InterventionError))

    def describe(self) -> str:
        return f"Scale({self.factor})"


@dataclass(frozen=True)
class Capture(Intervention):
    """Save tensors at the chosen sites and steps as labelled arrays.

    ``what="output"``: the attention output (image stream for joint sites), dims
    (sample, step, token, channel); ``what="kv"``: the text K/V after any edit, dims
    (sample, step, token, head, channel). ``sites="denoiser"`` captures the denoiser's
    prediction per step (sample, step, channel, height, width) or (sample, step, token, channel).
    Captures read the conditional half of CFG unless ``cfg="uncond"``.
    """

    what: Literal["output", "kv"] = "output"
    name: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.name is not None:
            checks.text(self.name, "Capture.name", InterventionError, allow_empty=False)
        if self.what not in ("output", "kv"):
            raise InterventionError(f"Capture what={self.what!r} unknown; choose 'output' or 'kv'.")
        if self.cfg == "both":
            object.__setattr__(self, "cfg", "cond")


@dataclass(frozen=True)
class AttentionMap(Intervention):
    """Capture text-token -> image attention probabilities: softmax(QK^T / sqrt(d)) over the keys the site
    attends to, image queries x text keys, aggregated on the fly (mean or sum over the chosen sites, steps and
    heads), so a map over 50 steps costs the memory of one. ``per_step=True`` keeps one map per step.

    Works at every text site: cross (incl. IF added-KV: the text columns of its [text, image] keys), joint
    (SD3/FLUX: the image-query x text-key block) and FLUX single-stream blocks. Read from the conditional half of
    CFG unless ``cfg="uncond"``. Capturing never changes the image. See :mod:`diffprobe.attention`.
    """

    cfg: Literal["both", "cond", "uncond"] = field(default="cond", kw_only=True)
    reduce: Literal["mean", "sum"] = "mean"
    per_step: bool = False
    name: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.cfg == "both":
            raise InterventionError("AttentionMap reads one CFG half: cfg='cond' (default) or 'uncond'.", field="cfg")
        if self.reduce not in ("mean", "sum"):
            raise InterventionError(f"AttentionMap reduce={self.reduce!r} unknown; choose 'mean' or 'sum'.")
        if not isinstance(self.per_step, bool):
            raise InterventionError(f"AttentionMap per_step must be True or False; got {self.per_step!r}.")
        if self.name is not None:
            checks.text(self.name, "AttentionMap.name", InterventionError, allow_empty=False)

    def describe(self) -> str:
        return "AttentionMap"


@dataclass(frozen=True)
class ReplaceAttention(Intervention):
    """Prompt-to-prompt (Hertz et al. 2022) word swap: this row's cross-attention probabilities are replaced by
    those of the run on ``source`` (a clean row of the same batch, same seed and step), while the values stay
    this row's own: the attention output becomes ``P_source @ V_self``. Applied to the conditional half by
    default, as in the paper's code; usually for the first part of the steps (``steps=":20"`` of 25).
    Cross sites whose keys are text only; the two prompts must have the same number of tokens.
    """

    cfg: Literal["both", "cond", "uncond"] = field(default="cond", kw_only=True)
    source: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.source is None:
            raise InterventionError("ReplaceAttention needs source=<prompt>: the prompt whose attention maps to use.")
        checks.text(self.source, "ReplaceAttention.source", InterventionError)

    def describe(self) -> str:
        return f"ReplaceAttention(source={self.source!r})"


def _check_sites(sites, owner: str) -> None:
    from .sites import Site, SiteCatalogue

    if isinstance(sites, (str, Site, SiteCatalogue)):
        if isinstance(sites, str):
            checks.text(sites, f"{owner}: sites", InterventionError, allow_empty=False)
        return
    if not isinstance(sites, Sequence) or not all(isinstance(s, (str, Site)) for s in sites):
        raise InterventionError(
            f"{owner}: cannot read sites={sites!r}; pass a string such as 'cross:3', a list of labels, or Site objects."
        )


def _check_steps(steps, owner: str) -> None:
    if steps is None or isinstance(steps, range):
        return
    if isinstance(steps, str):
        checks.text(steps, f"{owner}: steps", InterventionError)
        return
    if isinstance(steps, bool) or not isinstance(steps, (int, Sequence)) or (
        isinstance(steps, Sequence) and any(isinstance(s, bool) or not isinstance(s, int) for s in steps)
    ):
        raise InterventionError(
            f"{owner}: cannot read steps={steps!r}; write '4:' (from 4 on), '2:5', an integer, or a list of integers."
        )


#: every intervention by its ``kind`` (the lower-cased class name), for specs and :func:`from_dict`
KINDS: dict[str, type[Intervention]] = {}


def from_dict(data: dict[str, Any]) -> Intervention:
    """The intervention a :meth:`Intervention.to_dict` mapping describes; errors name the valid kinds and fields."""
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise InterventionError(
            f"an intervention mapping needs a 'kind' ({', '.join(KINDS)}), e.g. {{'kind': 'inject', 'prompt': ...}}; "
            f"got {data!r}."
        )
    kind = data["kind"]
    if kind not in KINDS:
        raise InterventionError(f"intervention kind {kind!r} unknown; choose one of {', '.join(KINDS)}."
                                + did_you_mean(kind, KINDS))
    cls = KINDS[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    fields = {k: v for k, v in data.items() if k != "kind"}
    for key in fields:
        if key not in names:
            raise InterventionError(f"{cls.__name__} has no field {key!r}.{did_you_mean(key, names)} "
                                    f"Fields: {', '.join(names)}.")
    return cls(**fields)


def resolve_steps(steps: StepSpec, n_steps: int, owner: str = "intervention") -> tuple[int, ...]:
    """The sorted loop indices a step spec names, validated against a run of ``n_steps`` steps."""
    if steps is None:
        return tuple(range(n_steps))
    if isinstance(steps, str):
        text = steps.strip()
        try:
            if ":" in text:
                a, b = text.split(":", 1)
                lo = int(a) if a.strip() else 0
                hi = int(b) if b.strip() else n_steps
            else:
                lo = int(text)
                hi = lo + 1
        except ValueError:
            raise InterventionError(
                f"{owner}: cannot read steps={steps!r}; write '4:' (from 4 on), '2:5', '3' or a list.", field="steps"
            ) from None
        if hi <= lo and 0 <= lo < n_steps:
            raise InterventionError(
                f"{owner}: step window {steps!r} is empty; valid steps are 0-{n_steps - 1}.", field="steps"
            )
        idx = list(range(lo, hi)) or [lo]  # a start outside [0, N) is reported below
    elif isinstance(steps, int):
        idx = [steps]
    else:
        idx = list(steps)
    if not idx:
        raise InterventionError(f"{owner}: the step window is empty; valid steps are 0-{n_steps - 1}.", field="steps")
    bad = [i for i in idx if not (isinstance(i, int) and 0 <= i < n_steps)]
    if bad:
        raise InterventionError(
            f"{owner}: step {bad[0]} is outside the run's denoising loop [0, {n_steps}); "
            f"valid steps are 0-{n_steps - 1} (e.g. steps='{min(2, n_steps - 1)}:' for t_s={min(2, n_steps - 1)}).", field="steps"
        )
    return tuple(sorted(set(idx)))


KINDS.update((cls.__name__.lower(), cls) for cls in (Patch, Inject, Ablate, Scale, Capture, AttentionMap, ReplaceAttention))
