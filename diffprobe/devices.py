"""Where a pipeline runs and in which precision: ``device="auto"`` and ``dtype="auto"``, resolved once.

``auto`` picks CUDA when present, then Apple's MPS, then the CPU; and the dtype each family is meant to
run in on an accelerator -- float16 for the SD 1.x/2.x, SDXL, DeepFloyd IF and PixArt pipelines (their
published weights are float16 variants), bfloat16 for SD3 and FLUX (float16 overflows in their
transformers) -- and float32 on the CPU, where half precision is slow and only emulated for some ops.
Explicit values always win. The resolved device, dtype and GPU name are recorded in every dataset
(:func:`runtime`), and a results store refuses to resume on another device type or dtype, whose numbers
would not match the finished batches.
"""
from __future__ import annotations

from typing import Any

import torch

from .errors import ModelLoadError, did_you_mean

__all__ = ["DTYPES", "FAMILY_DTYPES", "resolve_device", "resolve_dtype", "runtime", "is_out_of_memory"]

#: names a user may type for a dtype
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
    "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

#: the dtype each pipeline family runs in on an accelerator (``dtype="auto"`` off the CPU)
FAMILY_DTYPES: dict[str, torch.dtype] = {
    "StableDiffusionPipeline": torch.float16,
    "StableDiffusionXLPipeline": torch.float16,
    "IFPipeline": torch.float16,
    "PixArtAlphaPipeline": torch.float16,
    "PixArtSigmaPipeline": torch.float16,
    "StableDiffusion3Pipeline": torch.bfloat16,
    "FluxPipeline": torch.bfloat16,
}


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    return kind == "cpu"


def resolve_device(device: Any = "auto") -> torch.device:
    """``"auto"`` (CUDA, then MPS, then CPU), ``None`` (the CPU), or an explicit device that must exist here."""
    if device is None:
        return torch.device("cpu")
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device(next(k for k in ("cuda", "mps", "cpu") if _available(k)))
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(
            f"device={device!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:1' or 'mps'.", field="device"
        ) from None
    if not _available(resolved.type):
        raise ModelLoadError(
            f"device={device!r} is not available on this machine (torch {torch.__version__}, "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}); use 'auto' or 'cpu'.", field="device"
        )
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ModelLoadError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA devices.",
                             field="device")
    return resolved


def resolve_dtype(dtype: Any, device: torch.device, pipeline_class: str | None) -> torch.dtype | None:
    """``"auto"``: float32 on the CPU, else the family's dtype (float16 when the family is unknown);
    ``None``: as saved; a ``torch.dtype`` or one of :data:`DTYPES`."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if isinstance(dtype, torch.dtype) and dtype not in set(DTYPES.values()):
            raise ModelLoadError(f"dtype={dtype} is not a floating dtype diffprobe runs in; use one of "
                                 f"float32, float16, bfloat16.", field="dtype")
        return dtype
    if not isinstance(dtype, str):
        raise ModelLoadError(f"dtype must be 'auto', a name such as 'bfloat16', or a torch.dtype; got {dtype!r}.",
                             field="dtype")
    name = dtype.strip().lower().removeprefix("torch.")
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        return FAMILY_DTYPES.get(pipeline_class or "", torch.float16)
    if name not in DTYPES:
        raise ModelLoadError(f"dtype={dtype!r} unknown; use 'auto', 'float32', 'float16' or 'bfloat16'."
                             + did_you_mean(name, DTYPES), field="dtype")
    return DTYPES[name]


def runtime(pipeline) -> dict[str, str]:
    """Where and how a loaded pipeline runs: device, dtype, GPU name, offload (recorded in datasets)."""
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    param = next(denoiser.parameters())
    device = _execution_device(pipeline)
    out = {"device": str(device), "device_type": device.type, "dtype": str(param.dtype).removeprefix("torch."),
           "offload": getattr(pipeline, "_diffprobe_offload", None) or "none"}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        out["gpu"] = "none"
    return out


def _execution_device(pipeline) -> torch.device:
    """The device the pipeline computes on (with CPU offload the weights sit on the CPU between calls)."""
    device = getattr(pipeline, "_execution_device", None)
    return torch.device(device) if device is not None else torch.device(pipeline.device)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (or the host) ran out of memory."""
    if isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
