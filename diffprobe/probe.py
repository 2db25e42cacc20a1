"""The Probe: one loaded pipeline, its site catalogue, and the way to run interventions on it."""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from .architectures import Adapter, adapter_for
from .errors import DiffprobeError, InterventionError
from .interventions import Intervention
from . import checks
from .plan import Variant, interventions_tuple, make_plan
from .sites import SiteCatalogue

__all__ = ["Probe", "Generation"]


@dataclass
class Generation:
    """What a run returns: uint8 images ``[sample, height, width, rgb]`` and labelled captures."""

    images: np.ndarray
    captures: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.images)

    def _repr_html_(self) -> str:  # notebooks: the images as a grid (see diffprobe.display)
        from .display import generation_html

        return generation_html(self)

    def _repr_png_(self) -> bytes:
        from .display import grid_png

        return grid_png(self.images)


class Probe:
    """A diffusers pipeline loaded into nnsight, with its attention sites catalogued.

    Make one with :func:`diffprobe.load`. ``probe.sites`` lists the attention sites in
    execution order; ``probe.generate`` runs prompts with interventions; ``probe.count`` sizes a
    selection against the whole denoiser (the paper's Table 1).
    """

    def __init__(self, *, name: str, denoiser: torch.nn.Module, adapter: Adapter, model=None,
                 defaults: dict | None = None):
        self.name = name
        #: generation settings used when a call leaves them None (e.g. the glyph model's 32x96 size)
        self.defaults: dict[str, Any] = dict(defaults or {})
        self.denoiser = denoiser
        self.adapter = adapter
        self.model = model  # nnsight DiffusionModel, None for meta builds
        self.sites = SiteCatalogue(adapter.sites(denoiser))
        #: a shipped model's own prompt check (``spell``, ``glyph-mmdit``: the quoted word is 1-8 letters A-Z):
        #: a function of one prompt returning what is wrong with it, or None; run before any compute
        self.prompt_check: Callable[[str], str | None] | None = None

    # -- construction --------------------------------------------------------
    @classmethod
    def from_nnsight(cls, model, *, name: str, defaults: dict | None = None) -> "Probe":
        pipe = model.pipeline
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if denoiser is None:
            raise DiffprobeError(
                f"{type(pipe).__name__} has no 'unet' or 'transformer' component: diffprobe needs a "
                "text-to-image pipeline with a denoiser."
            )
        adapter = adapter_for(denoiser)
        pipe.set_progress_bar_config(disable=True)
        return cls(name=name, denoiser=denoiser, adapter=adapter, model=model, defaults=defaults)

    @classmethod
    def from_denoiser(cls, denoiser: torch.nn.Module, *, name: str) -> "Probe":
        return cls(name=name, denoiser=denoiser, adapter=adapter_for(denoiser))

    @property
    def pipeline(self):
        return None if self.model is None else self.model.pipeline

    def weights_digest(self) -> str | None:
        """A short fingerprint of the denoiser's weights (a strided sample of every tensor; cheap even
        for SDXL). Results stores record it, so a store written before a model was retrained is refused
        instead of silently resumed. Computed on each call, so in-place edits of the weights count.
        None for meta builds, which have no weights."""
        if self.model is None:
            return None
        import hashlib

        h = hashlib.sha256()
        with torch.no_grad():
            for name, p in sorted(self.denoiser.state_dict().items()):
                flat = p.detach().reshape(-1)
                h.update(name.encode())
                h.update(flat[:: max(1, flat.numel() // 64)][:64].to(torch.float32).cpu().numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def runtime(self) -> dict[str, str]:
        """Where and how the pipeline runs: device, device_type, dtype, offload and GPU name (empty for meta builds)."""
        if self.model is None:
            return {}
        from .devices import runtime

        return runtime(self.pipeline)

    @property
    def total_params(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    def __repr__(self) -> str:
        return f"Probe({self.name!r}, {type(self.denoiser).__name__}, {self.sites!r})"

    def _repr_html_(self) -> str:  # notebooks: the model's facts and its text sites as tables
        from .display import probe_html

        return probe_html(self)

    # -- counting ------------------------------------------------------------
    def count(self, sites: str | Sequence = "cross:all") -> dict:
        """Text K/V parameters of a site selection, the denoiser's total, and the fraction."""
        chosen = self.sites.parse(sites) if isinstance(sites, str) else SiteCatalogue(sites)
        localized = sum(s.kv_params for s in chosen)
        total = self.total_params
        return {
            "sites": [s.label for s in chosen],
            "names": [s.name for s in chosen],
            "localized_params": localized,
            "total_params": total,
            "fraction": localized / total if total else 0.0,
        }

    # -- running -------------------------------------------------------------
    def _require_weights(self) -> None:
        if self.model is None:
            raise DiffprobeError(
                f"{self.name} is a weightless meta build for the catalogue and counting; load a real "
                "pipeline (a directory, a hub id, or the default 'glyph') to generate."
            )

    def run(
        self,
        variants: Sequence[Variant],
        *,
        steps: int,
        guidance: float | None = None,
        height: int | None = None,
        width: int | None = None,
        share_prefix: bool = True,
        prefix_cache=None,
    ) -> Generation:
        """Run many variants (prompt, seed, interventions) as one batched pipeline call.

        ``share_prefix``: variants that repeat a (prompt, negative prompt, seed) run the steps before the
        first edited step once and fork there (see :mod:`diffprobe.engine`); ``False`` runs every row.
        ``prefix_cache``: a :class:`diffprobe.engine.PrefixCache` kept across calls on unchanged weights."""
        from .captures import label_captures

        plan, result = self.execute(variants, steps=steps, guidance=guidance, height=height, width=width,
                                    share_prefix=share_prefix, prefix_cache=prefix_cache)
        return Generation(images=result.images, captures=label_captures(result, plan))

    def execute(self, variants: Sequence[Variant], *, steps: int, guidance: float | None = None,
                height: int | None = None, width: int | None = None, share_prefix: bool = True,
                prefix_cache=None):
        """Check the request, apply the model's defaults, plan and run: ``(Plan, EngineResult)``. The one place
        :meth:`run` and :func:`diffprobe.attention.run` (which also labels attention maps) share."""
        from .engine import run_plan

        self._require_weights()
        if isinstance(variants, Variant) or not isinstance(variants, Sequence) or isinstance(variants, str):
            raise InterventionError(f"run takes a list of Variant objects; got {type(variants).__name__}.")
        bad = [v for v in variants if not isinstance(v, Variant)]
        if bad:
            raise InterventionError(f"run takes Variant objects; got a {type(bad[0]).__name__} ({bad[0]!r}).")
        guidance = self.defaults.get("guidance") if guidance is None else guidance
        height = self.defaults.get("height") if height is None else height
        width = self.defaults.get("width") if width is None else width
        if guidance is not None:
            guidance = checks.number(guidance, "guidance", InterventionError, lo=0.0)
        height = None if height is None else checks.integer(height, "height", InterventionError, lo=8)
        width = None if width is None else checks.integer(width, "width", InterventionError, lo=8)
        steps = checks.integer(steps, "steps", InterventionError, lo=1)
        if not isinstance(share_prefix, bool):
            raise InterventionError(f"share_prefix must be True or False; got {share_prefix!r}.")
        plan = make_plan(list(variants), self.sites, steps, supports_inject=self.adapter.supports_inject)
        if self.prompt_check is not None:
            for problem in filter(None, map(self.prompt_check, dict.fromkeys(r.prompt for r in plan.rows))):
                raise InterventionError(problem)
        return plan, run_plan(self, plan, guidance=guidance, height=height, width=width, share_prefix=share_prefix,
                              prefix_cache=prefix_cache)

    def generate(
        self,
        prompts: str | Sequence[str],
        interventions: Sequence[Intervention] = (),
        *,
        steps: int,
        seed: int | Sequence[int] = 0,
        guidance: float | None = None,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
    ) -> Generation:
        """Generate ``prompts`` (each with the same interventions) through the full denoising loop.

        ``steps`` is required: nnsight's traced default is one step. ``seed`` is one seed for all
        prompts or one per prompt; each image draws its noise from its own generator, so a prompt's
        image does not depend on what else is in the batch.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, Sequence) or not prompts:
            raise InterventionError(f"prompts must be a string or a non-empty list of strings; got {prompts!r}.")
        interventions = interventions_tuple(interventions)
        if isinstance(seed, (str, bytes)) or not isinstance(seed, (numbers.Integral, Sequence)):
            raise InterventionError(f"seed must be an integer or a list of integers; got {type(seed).__name__} {seed!r}.")
        seeds = [seed] * len(prompts) if isinstance(seed, numbers.Integral) else list(seed)
        if len(seeds) != len(prompts):
            raise InterventionError(f"{len(seeds)} seeds for {len(prompts)} prompts; pass one seed or one per prompt.")
        variants = [Variant(p, tuple(interventions), s, negative_prompt) for p, s in zip(prompts, seeds)]
        return self.run(variants, steps=steps, guidance=guidance, height=height, width=width)
