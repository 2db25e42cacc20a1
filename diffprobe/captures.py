"""Captured tensors as labelled xarray DataArrays, in diffprobe's dimension vocabulary.

- attention outputs: (sample, step, token, channel)
- text keys / values (``<name>:k`` and ``<name>:v``): (sample, step, token, head, channel)
- the denoiser's prediction: (sample, step, channel, height, width) for UNets
"""
from __future__ import annotations

import torch
import xarray as xr

from .engine import EngineResult
from .plan import Plan

__all__ = ["label_captures"]


def _dims(ndim: int, kv: bool, denoiser: bool) -> tuple[str, ...]:
    if kv:
        return ("sample", "step", "token", "head", "channel")
    if denoiser and ndim == 3:
        return ("sample", "step", "channel", "height", "width")
    if ndim == 2:
        return ("sample", "step", "token", "channel")
    return ("sample", "step") + tuple(f"dim_{i}" for i in range(ndim))


def label_captures(result: EngineResult, plan: Plan) -> dict[str, xr.DataArray]:
    """One DataArray per capture name; ``sample`` indexes the variants that asked for it."""
    heads, denoiser = {}, set()
    for sp in plan.sites:
        for op in sp.cap:
            if op.what == "kv":
                heads.update(dict.fromkeys(op.outputs, sp.site.heads))
            elif op.what == "denoiser":
                denoiser.update(op.outputs)
    out: dict[str, xr.DataArray] = {}
    for name, per_variant in result.captures.items():
        samples = sorted(per_variant)
        stacked = torch.stack([per_variant[s] for s in samples]).float().cpu()
        if name in heads:
            stacked = stacked.reshape(*stacked.shape[:-1], heads[name], -1)
        per_step_ndim = stacked.ndim - 2 - (1 if name in heads else 0)
        out[name] = xr.DataArray(
            stacked.numpy(), dims=_dims(per_step_ndim, name in heads, name in denoiser),
            coords={"sample": samples, "step": list(result.capture_steps[name])}, name=name,
        )
    return out
