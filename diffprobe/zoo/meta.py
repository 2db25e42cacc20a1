"""``<name>:meta``: full-size denoisers built from bundled configs on the meta device (no weights, no memory).

Good for the catalogue, parameter counting (the paper's Table 1) and planning; not for generating.
"""
from __future__ import annotations

import json
from importlib import resources

import torch

from ..errors import ModelLoadError, did_you_mean

__all__ = ["META_CONFIGS", "meta_denoiser"]

#: ``<name>:meta`` builds: bundled full-size denoiser configs (no weights).
META_CONFIGS: dict[str, str] = {
    "sd-1.5": "sd-1.5.unet.json",
    "sdxl-base-1.0": "sdxl-base-1.0.unet.json",
    "sd3-medium": "sd3-medium.transformer.json",
    "if-i-xl": "if-i-xl-v1.0.unet.reconstructed.json",
    "flux.1-dev": "flux.1-dev.transformer.json",
}


def meta_denoiser(name: str) -> torch.nn.Module:
    """A full-size denoiser built from a bundled config on the meta device (no memory used)."""
    import diffusers

    if name not in META_CONFIGS:
        raise ModelLoadError(
            f"No bundled config {name!r}:meta; available: {', '.join(k + ':meta' for k in META_CONFIGS)}."
            + did_you_mean(name, META_CONFIGS)
        )
    text = resources.files("diffprobe.zoo").joinpath("configs", META_CONFIGS[name]).read_text()
    config = json.loads(text)
    cls = getattr(diffusers, config["_class_name"])
    with torch.device("meta"):
        return cls.from_config(config)
