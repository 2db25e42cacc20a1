"""How well an OCR reading matches a text: character precision/recall, F1, exact match, edit distance.

The paper scores a generated word by the *character multiset* it shares with the wanted word,
not by whole-word equality, so a near miss ("stoq" for "stop") still earns partial credit and the
scores move smoothly as an intervention is strengthened. Both strings are lower-cased and all
whitespace is dropped before counting, so "hello world" and "helloworld" score the same.

With ``m`` the size of the multiset intersection of OCR and text characters::

    P = m / len(ocr)      R = m / len(text)      F1 = 2 P R / (P + R)

Empty strings: when both are empty the reading is perfect, ``(P, R) = (1, 1)``. When exactly one
is empty nothing is shared and the score is ``(0, 0)``: a blank image earns no precision for
reading nothing, and a spurious reading of an empty text earns no recall.

Over a set of samples the paper's F1 is the harmonic mean of the *mean* precision and the *mean*
recall (``set_f1``), which is not the mean of per-sample F1s (``char_f1``); both are provided.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from diffprobe.errors import MetricError

__all__ = ["char_precision_recall", "char_f1", "set_f1", "exact_match", "levenshtein", "normalize"]


def normalize(text: str) -> str:
    """Lower-cased, with runs of whitespace collapsed to one space and the ends stripped."""
    return " ".join(str(text).lower().split())


def char_precision_recall(ocr: str, text: str) -> tuple[float, float]:
    """Character-multiset precision and recall of an OCR reading against a text (whitespace dropped)."""
    read, want = _chars(ocr), _chars(text)
    n_read, n_want = sum(read.values()), sum(want.values())
    if n_read == 0 and n_want == 0:
        return 1.0, 1.0
    if n_read == 0 or n_want == 0:
        return 0.0, 0.0
    matched = sum((read & want).values())
    return matched / n_read, matched / n_want


def char_f1(ocr: str, text: str) -> float:
    """Per-sample F1 of ``char_precision_recall`` (0 when precision and recall are both 0)."""
    p, r = char_precision_recall(ocr, text)
    return _harmonic(p, r)


def set_f1(precisions: Sequence[float], recalls: Sequence[float]) -> float:
    """The paper's F1 over a set: ``2 mean(P) mean(R) / (mean(P) + mean(R))``."""
    p, r = np.asarray(precisions, dtype=np.float64), np.asarray(recalls, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise MetricError(f"set_f1 needs two 1-d sequences of equal length; got shapes {p.shape} and {r.shape}.")
    if p.size == 0:
        raise MetricError("set_f1 needs at least one sample; got empty precision and recall.")
    return _harmonic(float(p.mean()), float(r.mean()))


def exact_match(ocr: str, text: str) -> bool:
    """Whether the reading equals the text after lower-casing and whitespace normalisation."""
    return normalize(ocr) == normalize(text)


def levenshtein(ocr: str, text: str) -> int:
    """Edit distance between the lower-cased, whitespace-normalised reading and text (rapidfuzz)."""
    return int(Levenshtein.distance(normalize(ocr), normalize(text)))


def _chars(text: str) -> Counter[str]:
    return Counter("".join(str(text).lower().split()))


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)
