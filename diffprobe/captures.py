"""Captured tensors as labelled xarray DataArrays (dims: sample, step, token, head, channel)."""
from __future__ import annotations

import xarray as xr

from .engine import EngineResult
from .plan import Plan

__all__ = ["label_captures"]


def _dims(name: str, ndim: int, kv: bool) -> tuple[str, ...]:
    if kv:
        return ("sample", "step", "token", "head", "channel")[: ndim + 1]
    if name.startswith("denoiser") and ndim == 4:
        return ("sample", "step", "channel", "height", "width")
    base = ("sample", "step", "token", "channel")
    return base if ndim == 3 else ("sample", "step") + tuple(f"dim_{i}" for i in range(ndim - 1))


def label_captures(result: EngineResult, plan: Plan) -> dict[str, xr.DataArray]:
    heads = {}
    for sp in plan.sites:
        for op in sp.cap:
            if op.what == "kv":
                heads[op.name] = heads[op.name + ":v"] = sp.site.heads
    out: dict[str, xr.DataArray] = {}
    for name, per_variant in result.captures.items():
        samples = sorted(per_variant)
        data = [per_variant[s] for s in samples]
        import torch

        stacked = torch.stack(data).float().cpu()
        if name in heads:
            stacked = stacked.reshape(*stacked.shape[:-1], heads[name], -1)
        dims = _dims(name, stacked.ndim - 1, name in heads)
        label = name if not name.endswith(":v") else name[:-2]
        key = (label + (":v" if name.endswith(":v") else ":k")) if name in heads else name
        out[key] = xr.DataArray(
            stacked.numpy(), dims=dims,
            coords={"sample": samples, "step": list(result.capture_steps[name])},
            name=key,
        )
    return out
