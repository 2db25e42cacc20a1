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

**Length** (``length_match``, ``length_error``): whether the reading has as many characters as
the text, whitespace removed. Character F1 and even Levenshtein can hide a word of the wrong
length (``"catn"`` for ``"cat"``: F1 0.86, one edit); the length view states it on its own.

Over a set of samples the paper's F1 is the harmonic mean of the *mean* precision and the *mean*
recall (``set_f1``), which is not the mean of per-sample F1s (``char_f1``); both are provided.

**The paper's own definitions** (``paper_*``) reproduce its evaluation code rather than the
definitions above, so a number can be compared with the paper's tables digit for digit. They are
looser and differ in four places (docs/metrics.md puts them side by side):

* each string is taken character by character, each character stripped and lower-cased, so a
  whitespace character becomes ``""``: it still counts in the length and it matches a whitespace
  of the other string; precision and recall divide by ``length + 1e-8``, so two empty strings
  score ``(0, 0)`` and a perfect read scores ``4 / (4 + 1e-8)``, not 1 (``paper_precision_recall``);
* "accuracy" is an **anagram** test: the sorted characters, whitespace removed, are equal
  (``"pots"`` is a correct read of ``"stop"``; two empty strings are correct) (``paper_accuracy``);
* Levenshtein on the lower-cased strings with no whitespace handling (``paper_levenshtein``);
* the F1 of a set adds ``1e-6`` to the denominator (``paper_set_f1``).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from diffprobe.errors import MetricError

__all__ = ["char_precision_recall", "char_f1", "set_f1", "exact_match", "levenshtein", "normalize",
           "rendered_length", "length_match", "length_error",
           "paper_precision_recall", "paper_accuracy", "paper_levenshtein", "paper_set_f1"]


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
    p, r = _means(precisions, recalls, "set_f1")
    return _harmonic(p, r)


def paper_precision_recall(ocr: str, text: str) -> tuple[float, float]:
    """Precision and recall exactly as the paper's evaluation code computes them.

    Both strings are split into characters, each character stripped and lower-cased (whitespace
    becomes ``""`` and still counts); ``matched`` is the size of the multiset intersection;
    ``P = matched / (len(ocr) + 1e-8)``, ``R = matched / (len(text) + 1e-8)``. Two empty strings
    give ``(0.0, 0.0)``."""
    read, want = _paper_chars(ocr), _paper_chars(text)
    matched = sum((Counter(read) & Counter(want)).values())
    return matched / (len(read) + 1e-8), matched / (len(want) + 1e-8)


def paper_accuracy(ocr: str, text: str) -> float:
    """The paper's "accuracy": 1.0 when the sorted, lower-cased characters (whitespace dropped) are
    equal, else 0.0. An anagram counts: ``paper_accuracy("pots", "stop") == 1.0``."""
    return float("".join(sorted(_paper_chars(ocr))) == "".join(sorted(_paper_chars(text))))


def paper_levenshtein(ocr: str, text: str) -> int:
    """The paper's edit distance: Levenshtein on the lower-cased strings, whitespace kept as it is."""
    return int(Levenshtein.distance(str(ocr).lower(), str(text).lower()))


def paper_set_f1(precisions: Sequence[float], recalls: Sequence[float]) -> float:
    """The paper's F1 of a set of samples: ``2 mean(P) mean(R) / (mean(P) + mean(R) + 1e-6)``.

    Pass the ``paper_precision_*`` and ``paper_recall_*`` arrays of a result (or diffprobe's
    ``ocr_precision_*`` / ``ocr_recall_*``; ``set_f1`` is the same without the ``1e-6``)."""
    p, r = _means(precisions, recalls, "paper_set_f1")
    return 2.0 * p * r / (p + r + 1e-6)


def exact_match(ocr: str, text: str) -> bool:
    """Whether the reading equals the text after lower-casing and whitespace normalisation."""
    return normalize(ocr) == normalize(text)


def levenshtein(ocr: str, text: str) -> int:
    """Edit distance between the lower-cased, whitespace-normalised reading and text (rapidfuzz)."""
    return int(Levenshtein.distance(normalize(ocr), normalize(text)))


def rendered_length(text: str) -> int:
    """The number of characters of a reading or text with all whitespace removed (what was drawn)."""
    return len("".join(str(text).split()))


def length_match(ocr: str, text: str) -> float:
    """1.0 when the reading has as many characters as the text (whitespace removed), else 0.0.

    The length-aware view that character F1 hides: ``"catn"`` for ``"cat"`` has F1 0.86 but the
    wrong length (a glyph of the old word remains); ``"cot"`` has the right length. Two empty
    strings match."""
    return float(rendered_length(ocr) == rendered_length(text))


def length_error(ocr: str, text: str) -> float:
    """``|len(reading) - len(text)|``, whitespace removed (0 is the right length; lower is better)."""
    return float(abs(rendered_length(ocr) - rendered_length(text)))


def _means(precisions: Sequence[float], recalls: Sequence[float], who: str) -> tuple[float, float]:
    p, r = np.asarray(precisions, dtype=np.float64), np.asarray(recalls, dtype=np.float64)
    if p.shape != r.shape or p.ndim != 1:
        raise MetricError(f"{who} needs two 1-d sequences of equal length; got shapes {p.shape} and {r.shape}.")
    if p.size == 0:
        raise MetricError(f"{who} needs at least one sample; got empty precision and recall.")
    return float(p.mean()), float(r.mean())


def _paper_chars(text: str) -> list[str]:
    return [c.strip().lower() for c in str(text)]


def _chars(text: str) -> Counter[str]:
    return Counter("".join(str(text).lower().split()))


def _harmonic(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)
