"""The embedded joint-attention model `glyph-mmdit`: a small Stable-Diffusion-3-family pipeline (MMDiT, 8 joint
blocks) that writes any word of 1-8 letters A-Z, trained and shipped by diffprobe (training/mmdit/).

A stock diffusers ``StableDiffusion3Pipeline`` (two small CLIP encoders, a one-layer T5 that only ever sees
``</s>``, a pixel-to-4-channel autoencoder, 32x128 images). Load it with ``diffprobe.load("glyph-mmdit")``, or
with diffusers: ``DiffusionPipeline.from_pretrained(default_model_path())`` and
``pipe(prompts, **CALL, num_inference_steps=25)``. Prompts: ``<template>[ in <font> letters] that says "<WORD>"``
(templates and fonts: :mod:`diffprobe.zoo.spell_data`). Model card: docs/model-card-mmdit.md.
"""
from __future__ import annotations

import pathlib

from .. import spell_data

NAME = "glyph-mmdit"
HEIGHT, WIDTH = spell_data.HEIGHT, spell_data.WIDTH
#: the pipeline call the model was trained for: one T5 token (it sees only </s>), 32x128 pixels
CALL = {"max_sequence_length": 1}
GUIDANCE = 4.0


def check_prompt(prompt: str) -> str | None:
    """What is wrong with ``prompt`` for this model (None when nothing): the quoted word must be 1-8 letters A-Z
    (lower case is fine); the tokenizer would silently drop anything else."""
    return spell_data.check_word_prompt(prompt, NAME)


def default_model_path() -> pathlib.Path:
    """The shipped pipeline directory (``diffprobe/zoo/glyph_mmdit/weights``)."""
    return pathlib.Path(__file__).resolve().parent / "weights"


__all__ = ["default_model_path", "check_prompt", "NAME", "HEIGHT", "WIDTH", "CALL", "GUIDANCE"]
