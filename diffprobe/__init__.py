"""diffprobe: mechanistic interpretability for text-to-image diffusion pipelines, built on nnsight.

Load a pipeline, list its attention sites in one vocabulary across architectures, and run
patching, injection, ablation, scaling and capture at any site, head and denoising step.
"""
from .errors import (
    DiffprobeError, InterventionError, MetricError, ModelLoadError, ResultsError, SiteError,
    SpecError, UnsupportedArchitectureError,
)
from .interventions import Ablate, Capture, Inject, Patch, Scale
from .plan import Variant
from .probe import Generation, Probe
from .sites import Site, SiteCatalogue
from .zoo.loading import load

__version__ = "0.1.0"

__all__ = [
    "load", "Probe", "Generation", "Site", "SiteCatalogue", "Variant",
    "Patch", "Inject", "Ablate", "Scale", "Capture",
    "DiffprobeError", "SiteError", "InterventionError", "ModelLoadError",
    "UnsupportedArchitectureError", "MetricError", "SpecError", "ResultsError",
]
