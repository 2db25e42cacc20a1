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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Union

from .errors import InterventionError

__all__ = [
    "Intervention",
    "Patch",
    "Inject",
    "Ablate",
    "Scale",
    "Capture",
    "resolve_steps",
    "CFG_POLICIES",
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
        object.__setattr__(self, "sites", _freeze(self.sites))
        object.__setattr__(self, "heads", _freeze(self.heads))
        object.__setattr__(self, "steps", _freeze(self.steps))
        if self.cfg not in CFG_POLICIES:
            raise InterventionError(f"cfg={self.cfg!r} is not a CFG policy; choose one of {CFG_POLICIES}.")
        if self.heads is not None:
            if len(self.heads) == 0:
                raise InterventionError("heads=() selects no head; pass None for all heads or a list of indices.")
            if any((not isinstance(h, int)) or h < 0 for h in self.heads):
                raise InterventionError(f"heads={self.heads!r} must be non-negative integers.")
        if isinstance(self.sites, tuple) and len(self.sites) == 0:
            raise InterventionError(
                f"{type(self).__name__} has an empty site list; name at least one site, e.g. sites='cross:0'."
            )

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

    source: str = ""

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.source, str):
            raise InterventionError(f"Patch.source must be a prompt string, got {type(self.source).__name__}.")

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

    prompt: str = ""
    negative_prompt: str | None = None

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
        object.__setattr__(self, "prompts", tuple(self.prompts))
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
        if self.what not in ("output", "kv"):
            raise InterventionError(f"Capture what={self.what!r} unknown; choose 'output' or 'kv'.")
        if self.cfg == "both":
            object.__setattr__(self, "cfg", "cond")


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
                f"{owner}: cannot read steps={steps!r}; write '4:' (from 4 on), '2:5', '3' or a list."
            ) from None
        if hi <= lo and 0 <= lo < n_steps:
            raise InterventionError(
                f"{owner}: step window {steps!r} is empty; valid steps are 0-{n_steps - 1}."
            )
        idx = list(range(lo, hi)) or [lo]  # a start outside [0, N) is reported below
    elif isinstance(steps, int):
        idx = [steps]
    else:
        idx = list(steps)
    if not idx:
        raise InterventionError(f"{owner}: the step window is empty; valid steps are 0-{n_steps - 1}.")
    bad = [i for i in idx if not (isinstance(i, int) and 0 <= i < n_steps)]
    if bad:
        raise InterventionError(
            f"{owner}: step {bad[0]} is outside the run's denoising loop [0, {n_steps}); "
            f"valid steps are 0-{n_steps - 1} (e.g. steps='{min(2, n_steps - 1)}:' for t_s={min(2, n_steps - 1)})."
        )
    return tuple(sorted(set(idx)))
