"""Character precision/recall, F1 (per sample and the paper's set F1), exact match, Levenshtein."""
from __future__ import annotations

import pytest

from diffprobe.errors import MetricError
from diffprobe.metrics import char_f1, char_precision_recall, exact_match, levenshtein, set_f1


def test_perfect_reading_ignores_case_and_whitespace():
    assert char_precision_recall("stop", "STOP") == (1.0, 1.0)
    assert char_precision_recall("hello world", "HelloWorld") == (1.0, 1.0)
    assert char_f1("s t o p", "stop") == 1.0


def test_multiset_counts_repeated_characters():
    # ocr 'aab' vs text 'ab': matched = min(2,1)+min(1,1) = 2 -> P = 2/3, R = 2/2
    assert char_precision_recall("aab", "ab") == pytest.approx((2 / 3, 1.0))
    # ocr 'stoq' vs 'stop': 3 of 4 characters shared both ways
    assert char_precision_recall("stoq", "stop") == pytest.approx((0.75, 0.75))
    assert char_f1("stoq", "stop") == pytest.approx(0.75)


def test_partial_reading_hand_computed():
    # ocr 'cat' vs text 'chat': matched 3 -> P = 1, R = 3/4, F1 = 2*0.75/1.75
    p, r = char_precision_recall("cat", "chat")
    assert (p, r) == (1.0, 0.75)
    assert char_f1("cat", "chat") == pytest.approx(2 * 1.0 * 0.75 / 1.75)


@pytest.mark.parametrize(
    ("ocr", "text", "expected"),
    [
        ("", "", (1.0, 1.0)),
        ("", "stop", (0.0, 0.0)),
        ("stop", "", (0.0, 0.0)),
        ("   ", "stop", (0.0, 0.0)),
        ("xyz", "stop", (0.0, 0.0)),
    ],
)
def test_empty_and_disjoint_cases(ocr, text, expected):
    assert char_precision_recall(ocr, text) == expected


def test_set_f1_is_harmonic_mean_of_means_not_mean_of_f1():
    precisions, recalls = [1.0, 0.0], [0.5, 1.0]
    mp, mr = 0.5, 0.75
    assert set_f1(precisions, recalls) == pytest.approx(2 * mp * mr / (mp + mr))
    assert set_f1([0.0, 0.0], [0.0, 0.0]) == 0.0
    with pytest.raises(MetricError, match="at least one"):
        set_f1([], [])
    with pytest.raises(MetricError, match="equal length"):
        set_f1([1.0], [1.0, 0.5])


def test_exact_match_and_levenshtein():
    assert exact_match("  Hello   World ", "hello world")
    assert not exact_match("helloworld", "hello world")
    assert levenshtein("STOP", "stop") == 0
    assert levenshtein("stoq", "stop") == 1
    assert levenshtein("", "stop") == 4
    assert levenshtein("kitten", "sitting") == 3
