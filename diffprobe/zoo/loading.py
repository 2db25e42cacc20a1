"""Where models come from: hub ids, local ``save_pretrained`` directories, pipeline objects,
bundled full-size configs on the meta device, and the embedded default model.

Every path ends in the same place: a :class:`~diffprobe.probe.Probe` around an nnsight
``DiffusionModel`` (or, for ``<name>:meta``, around a weightless denoiser that is good for the
catalogue and parameter counting only).
"""
from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, did_you_mean

__all__ = ["load", "META_CONFIGS", "DEFAULT_MODEL", "meta_denoiser"]

#: ``<name>:meta`` builds: bundled full-size denoiser configs (no weights).
META_CONFIGS: dict[str, str] = {
    "sd-1.5": "sd-1.5.unet.json",
    "sdxl-base-1.0": "sdxl-base-1.0.unet.json",
    "sd3-medium": "sd3-medium.transformer.json",
    "if-i-xl": "if-i-xl-v1.0.unet.reconstructed.json",
    "flux.1-dev": "flux.1-dev.transformer.json",
}

#: Name of the embedded default model (trained and shipped with diffprobe).
DEFAULT_MODEL = "glyph"


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


def _default_model_dir() -> Path:
    try:
        from .glyph import default_model_path
    except ImportError as exc:  # pragma: no cover - the package ships it
        raise ModelLoadError(f"The embedded default model is not installed ({exc}).") from None
    path = Path(default_model_path())
    if not (path / "model_index.json").exists():
        raise ModelLoadError(
            f"The embedded default model's weights are missing at {path}. Train them with "
            "`make train-glyph` (python -m training.glyph.train) or pass another model."
        )
    return path


def _nnsight_model(source: Any, dtype, device) -> Any:
    from nnsight.modeling.diffusion import DiffusionModel, _PipelineModule

    class _ObjectDiffusionModel(DiffusionModel):
        """nnsight's DiffusionModel over an already built pipeline object (0.8.1 takes paths only)."""

        def _load(self, repo_id, *args, **kwargs):
            self.pipeline = repo_id
            return _PipelineModule(repo_id)

    if not isinstance(source, (str, Path)):
        if dtype is not None or device is not None:
            source.to(device=device, dtype=dtype)
        return _ObjectDiffusionModel(source, dispatch=True)
    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    model = DiffusionModel(str(source), dispatch=True, **kwargs)
    if device is not None:
        model.pipeline.to(device)
    return model


def _load_local(path: Path, dtype, device):
    if not (path / "model_index.json").exists():
        raise ModelLoadError(
            f"{path} is a directory but not a diffusers pipeline (no model_index.json). "
            "Point to a folder written by DiffusionPipeline.save_pretrained()."
        )
    try:
        return _nnsight_model(path, dtype, device)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelLoadError(f"Could not load the pipeline in {path}: {exc}") from None


def _load_hub(repo_id: str, dtype, device):
    from huggingface_hub import constants

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return _nnsight_model(repo_id, dtype, device)
    except Exception as exc:  # hub errors are many types; all mean "not here"
        raise ModelLoadError(
            f"Could not load {repo_id!r}: it is not a local directory, and its weights are not in the "
            f"Hugging Face cache at {constants.HF_HUB_CACHE}"
            + (" (HF_HUB_OFFLINE is set, so the hub was not asked)" if offline else " and could not be downloaded")
            + f". Get them with `huggingface-cli download {repo_id}` on a machine with access (then copy the "
            "cache or a save_pretrained() folder here), or pass a local directory. "
            f"For the catalogue alone, try a bundled config: {', '.join(k + ':meta' for k in META_CONFIGS)}. "
            f"[{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}]"
        ) from None


def load(model: Any = DEFAULT_MODEL, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None):
    """Load a text-to-image pipeline into nnsight and return a :class:`~diffprobe.probe.Probe`.

    Args:
        model: a hub id (``"stabilityai/stable-diffusion-xl-base-1.0"``), a local directory written by
            ``save_pretrained``, an already built ``DiffusionPipeline``, ``"<name>:meta"`` for a
            weightless full-size denoiser (catalogue and counting only), or ``"glyph"`` (the default)
            for the embedded model diffprobe ships.
        device: where to put the pipeline (default: where it loads, the CPU).
        dtype: weights dtype (default: as saved; full precision for the tiny and embedded models).
    """
    from ..probe import Probe

    if isinstance(model, str) and model.endswith(":meta"):
        name = model[: -len(":meta")]
        return Probe.from_denoiser(meta_denoiser(name), name=model)
    if isinstance(model, str) and model == DEFAULT_MODEL:
        from .glyph import HEIGHT, WIDTH

        return Probe.from_nnsight(
            _nnsight_model(_default_model_dir(), dtype, device), name=DEFAULT_MODEL,
            defaults={"height": HEIGHT, "width": WIDTH},
        )
    if isinstance(model, (str, Path)):
        path = Path(model).expanduser()
        if path.is_dir():
            return Probe.from_nnsight(_load_local(path, dtype, device), name=str(model))
        looks_local = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
        if looks_local or path.suffix:
            raise ModelLoadError(
                f"No model at {path.resolve()}: the directory does not exist. Pass a folder written by "
                f"save_pretrained(), a hub id such as 'stabilityai/stable-diffusion-xl-base-1.0', "
                f"'{DEFAULT_MODEL}' (the embedded model) or one of {', '.join(k + ':meta' for k in META_CONFIGS)}."
            )
        return Probe.from_nnsight(_load_hub(str(model), dtype, device), name=str(model))
    from diffusers import DiffusionPipeline

    if isinstance(model, DiffusionPipeline):
        return Probe.from_nnsight(_nnsight_model(model, dtype, device), name=type(model).__name__)
    raise ModelLoadError(
        f"Cannot load a {type(model).__name__}: pass a hub id, a directory, a DiffusionPipeline or '<name>:meta'."
    )
