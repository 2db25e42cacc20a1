"""Prompt pairs for the embedded glyph model: its own templates, source and target words differ."""
from __future__ import annotations

import numpy as np

from .bench import PromptPair

__all__ = ["glyph_pairs", "spell_pairs"]


def glyph_pairs(n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs on the glyph model's templates; each pair keeps the template and swaps the word."""
    from .zoo.glyph import data

    return _word_pairs(data, data.WORDS, n, seed)


def spell_pairs(n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs for the open-vocabulary model ``glyph-mmdit``: one of its templates, two different words from
    the HELD-OUT list (words the model never saw in training), no font asked for."""
    from .zoo import spell_data

    return _word_pairs(spell_data, spell_data.eval_heldout(), n, seed)


def _word_pairs(data, words, n: int, seed: int) -> list[PromptPair]:
    """``n`` pairs on ``data``'s templates: a random template, two different ``words``, pair i seeded ``seed + i``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(len(data.TEMPLATES)))
        a, b = rng.choice(len(words), size=2, replace=False)
        wa, wb = words[int(a)], words[int(b)]
        out.append(PromptPair(data.prompt(t, wa), data.prompt(t, wb), wa, wb, seed + i))
    return out
