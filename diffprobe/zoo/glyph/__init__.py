"""The embedded glyph model: a small pixel-space text-rendering diffusion model that diffprobe trains and ships.

A stock diffusers ``IFPipeline`` (32x96 RGB pixels, no VAE) with a word-level tokenizer and a small T5 encoder.
Load it with ``DiffusionPipeline.from_pretrained(default_model_path())`` and generate with
``pipe(prompts, height=32, width=96, num_inference_steps=25, guidance_scale=4.0, clean_caption=False)``.
Prompts: ``<template> that says "<WORD>"`` (see :mod:`diffprobe.zoo.glyph.data`). Model card: docs/model-card.md.
"""
from __future__ import annotations

import pathlib

HEIGHT, WIDTH = 32, 96


def default_model_path() -> pathlib.Path:
    """The shipped pipeline directory (``diffprobe/zoo/glyph/weights``)."""
    return pathlib.Path(__file__).resolve().parent / "weights"


__all__ = ["default_model_path", "HEIGHT", "WIDTH"]
