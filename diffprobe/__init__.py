"""diffprobe: mechanistic interpretability for text-to-image diffusion pipelines, built on nnsight.

Load a pipeline, list its attention sites in one vocabulary across architectures, and run
patching, injection, ablation, scaling and capture at any site, head and denoising step.

``import diffprobe`` registers the ``ds.dp`` accessor on xarray datasets; the names that need torch
(``load``, ``Probe``, ``Generation``) are imported on first use, so the command line starts quickly.
"""
from importlib import import_module

from . import accessor as _accessor  # noqa: F401  (registers the ``ds.dp`` accessor on xarray datasets)
from .errors import (
    DiffprobeError, InterventionError, MetricError, ModelLoadError, ResultsError, SiteError,
    SpecError, UnsupportedArchitectureError,
)
from .interventions import Ablate, AttentionMap, Capture, Inject, Patch, ReplaceAttention, Scale
from .plan import Variant
from .sites import Site, SiteCatalogue
from .spec import Experiment

__version__ = "0.1.0"

_LAZY = {"load": "loading", "Probe": "probe", "Generation": "probe", "localize": "localization", "attend": "attention",
         "edit_text": "edit", "guard": "safety", "finetune": "lora"}

__all__ = [
    "load", "localize", "Probe", "Generation", "Site", "SiteCatalogue", "Variant", "Experiment",
    "Patch", "Inject", "Ablate", "Scale", "Capture", "AttentionMap", "ReplaceAttention", "attend", "edit_text",
    "guard", "finetune",
    "DiffprobeError", "SiteError", "InterventionError", "ModelLoadError",
    "UnsupportedArchitectureError", "MetricError", "SpecError", "ResultsError",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffprobe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
