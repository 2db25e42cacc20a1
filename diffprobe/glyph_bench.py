"""Prompt pairs for the embedded glyph model: its own templates, source and target words differ."""
from __future__ import annotations

import numpy as np

from .bench import PromptPair

__all__ = ["glyph_pairs", "spell_pairs"]


def glyph_pairs(n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs on the glyph model's templates; each pair keeps the template and swaps the word."""
    from .zoo.glyph import data

    return _word_pairs(data, data.WORDS, n, seed)


def spell_pairs(n: int, seed: int = 0, max_letters: int | None = None, font: str | None = None) -> list[PromptPair]:
    """``n`` pairs for the open-vocabulary models (``spell``, ``glyph-mmdit``): one of their templates, two different
    words from the HELD-OUT list (words the model never saw in training), no font asked for. ``max_letters``: words
    of 3 to that many letters only (a curriculum stage's words); ``font``: ask for that face, on the templates it
    is trained with (never a held-out template x font combination)."""
    from .zoo import spell_data

    words = spell_data.eval_heldout(max_letters or spell_data.MAX_LETTERS)
    if font is None:
        return _word_pairs(spell_data, words, n, seed)
    templates = [t for t, f in spell_data.train_combos((font,))]
    return _word_pairs(spell_data, words, n, seed, templates, lambda t, w: spell_data.prompt(t, w, font))


def _word_pairs(data, words, n: int, seed: int, templates=None, prompt=None) -> list[PromptPair]:
    """``n`` pairs on ``data``'s templates (or the indices ``templates``): a random template, two different
    ``words``, pair i seeded ``seed + i``; ``prompt(template, word)`` defaults to ``data.prompt``."""
    rng = np.random.default_rng(seed)
    prompt = prompt or data.prompt
    out = []
    for i in range(n):
        t = int(rng.integers(len(data.TEMPLATES))) if templates is None else templates[int(rng.integers(len(templates)))]
        a, b = rng.choice(len(words), size=2, replace=False)
        wa, wb = words[int(a)], words[int(b)]
        out.append(PromptPair(prompt(t, wa), prompt(t, wb), wa, wb, seed + i))
    return out
