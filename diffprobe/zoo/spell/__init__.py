"""The embedded open-vocabulary UNet `spell`: glyph's character-aware successor, which writes any word of 1-8 letters
A-Z, trained and shipped by diffprobe (training/spell/).

A stock diffusers ``IFPipeline`` (a 3-layer T5 encoder over a tokenizer that spells the quoted word letter by
letter, the UNet of ``glyph`` at 32x128 pixels). Load it with ``diffprobe.load("spell")``, or with diffusers:
``DiffusionPipeline.from_pretrained(default_model_path())`` and
``pipe(prompts, height=32, width=128, guidance_scale=4.0, num_inference_steps=25, clean_caption=False)``.
Prompts: ``<template>[ in <font> letters] that says "<WORD>"`` (templates and fonts:
:mod:`diffprobe.zoo.spell_data`). Model card: docs/model-card-spell.md.
"""
from __future__ import annotations

import pathlib

from .. import spell_data

NAME = "spell"
HEIGHT, WIDTH = spell_data.HEIGHT, spell_data.WIDTH
GUIDANCE = 4.0


def check_prompt(prompt: str) -> str | None:
    """What is wrong with ``prompt`` for this model (None when nothing): the quoted word must be 1-8 letters A-Z
    (lower case is fine); the tokenizer would silently drop anything else."""
    return spell_data.check_word_prompt(prompt, NAME)


def default_model_path() -> pathlib.Path:
    """The shipped pipeline directory (``diffprobe/zoo/spell/weights``)."""
    return pathlib.Path(__file__).resolve().parent / "weights"


__all__ = ["default_model_path", "check_prompt", "NAME", "HEIGHT", "WIDTH", "GUIDANCE"]
