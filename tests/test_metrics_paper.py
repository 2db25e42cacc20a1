"""The paper's own metric definitions (``paper_*``): known answers, including every case where they
differ from diffprobe's stricter ``ocr_*`` / ``exact_*`` / ``lev_*``, and a check against a direct
transcription of the paper's counting loop on random strings."""
from __future__ import annotations

import random

import numpy as np
import pytest

from diffprobe.errors import MetricError
from diffprobe.metrics import (
    DEFAULT_METRICS, METRICS, char_precision_recall, compute, exact_match, levenshtein, lower_is_better,
    paper_accuracy, paper_levenshtein, paper_precision_recall, paper_set_f1, set_f1,
)

EPS = 1e-8


def test_perfect_read_is_just_below_one_because_of_the_1e8_denominators():
    p, r = paper_precision_recall("stop", "stop")
    assert p == r == 4 / (4 + EPS)
    assert p < 1.0
    assert paper_accuracy("stop", "stop") == 1.0
    assert paper_levenshtein("stop", "stop") == 0
    assert char_precision_recall("stop", "stop") == (1.0, 1.0)  # diffprobe's own: exactly 1


def test_reading_and_text_are_lower_cased():
    assert paper_precision_recall("STOP", "Stop") == (4 / (4 + EPS), 4 / (4 + EPS))
    assert paper_accuracy("StOp", "STOP") == 1.0
    assert paper_levenshtein("STOP", "stop") == 0


def test_two_empty_strings_score_zero_but_are_accurate():
    assert paper_precision_recall("", "") == (0.0, 0.0)  # diffprobe's own: (1, 1)
    assert char_precision_recall("", "") == (1.0, 1.0)
    assert paper_accuracy("", "") == 1.0  # the sorted character strings are both ""
    assert paper_levenshtein("", "") == 0


def test_empty_reading_and_empty_text():
    assert paper_precision_recall("", "stop") == (0.0, 0.0)
    assert paper_accuracy("", "stop") == 0.0
    assert paper_levenshtein("", "stop") == 4
    assert paper_precision_recall("stop", "") == (0.0, 0.0)


def test_anagram_counts_as_accurate_but_not_as_exact():
    assert paper_accuracy("pots", "stop") == 1.0
    assert paper_precision_recall("pots", "stop") == (4 / (4 + EPS), 4 / (4 + EPS))
    assert not exact_match("pots", "stop")  # diffprobe's exact_* stays strict
    # p-o-t-s vs s-t-o-p: the reversed word; every position is substituted (4 edits)
    assert paper_levenshtein("pots", "stop") == levenshtein("pots", "stop") == 4
    assert paper_accuracy("stoq", "stop") == 0.0


def test_whitespace_characters_become_empty_strings_that_count_and_match():
    # 'hello world': 11 characters, the space becomes "" and has no partner in 'helloworld'
    p, r = paper_precision_recall("hello world", "helloworld")
    assert (p, r) == (10 / (11 + EPS), 10 / (10 + EPS))
    assert char_precision_recall("hello world", "helloworld") == (1.0, 1.0)  # diffprobe drops whitespace
    # a tab and a space are both stripped to "", so they match each other
    assert paper_precision_recall("a\tb", "a b") == (3 / (3 + EPS), 3 / (3 + EPS))
    # a reading of only whitespace for an empty text: 3 characters, none matched, yet "accurate"
    assert paper_precision_recall("   ", "") == (0.0, 0.0)
    assert paper_accuracy("   ", "") == 1.0
    assert paper_accuracy("hello world", "helloworld") == 1.0


def test_multiset_counting_of_repeated_characters():
    assert paper_precision_recall("aab", "ab") == (2 / (3 + EPS), 2 / (2 + EPS))
    assert paper_precision_recall("xyz", "stop") == (0.0, 0.0)


def test_levenshtein_has_no_whitespace_handling():
    assert paper_levenshtein("a  b", "a b") == 1
    assert levenshtein("a  b", "a b") == 0  # diffprobe collapses runs of whitespace
    assert paper_levenshtein("stop ", "stop") == 1
    assert levenshtein("stop ", "stop") == 0
    assert paper_levenshtein("a\tb", "a b") == 1
    assert paper_levenshtein("kitten", "sitting") == 3


def test_paper_set_f1_adds_1e6_to_the_denominator():
    precisions, recalls = [1.0, 0.0], [0.5, 1.0]
    mp, mr = 0.5, 0.75
    assert paper_set_f1(precisions, recalls) == 2 * mp * mr / (mp + mr + 1e-6)
    assert paper_set_f1(precisions, recalls) < set_f1(precisions, recalls)
    assert paper_set_f1([1.0], [1.0]) == 2 / (2 + 1e-6)
    assert paper_set_f1([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert paper_set_f1(np.array([0.25]), np.array([0.5])) == 2 * 0.25 * 0.5 / (0.75 + 1e-6)
    with pytest.raises(MetricError, match="at least one"):
        paper_set_f1([], [])
    with pytest.raises(MetricError, match="equal length"):
        paper_set_f1([1.0], [1.0, 0.5])


def _paper_loop(pred: str, gt: str) -> tuple[float, float, int]:
    """The paper's counting, transcribed step by step: per-character strip+lower, remove matches from copies."""
    pred_chars = [c.strip().lower() for c in pred]
    gt_chars = [c.strip().lower() for c in gt]
    pred_left, gt_left = list(pred_chars), list(gt_chars)
    for c in pred_chars:
        if c in gt_left:
            pred_left.remove(c)
            gt_left.remove(c)
    p = (len(pred_chars) - len(pred_left)) / (len(pred_chars) + EPS)
    r = (len(gt_chars) - len(gt_left)) / (len(gt_chars) + EPS)
    acc = int("".join(sorted(pred_chars)) == "".join(sorted(gt_chars)))
    return p, r, acc


def test_agrees_with_the_paper_loop_on_random_strings():
    rng = random.Random(0)
    alphabet = "abcABC \t\n"
    for _ in range(2000):
        pred = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        gt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        p, r, acc = _paper_loop(pred, gt)
        assert paper_precision_recall(pred, gt) == (p, r), (pred, gt)
        assert paper_accuracy(pred, gt) == acc, (pred, gt)


def test_registered_computed_by_compute_and_in_the_defaults():
    names = [f"paper_{stem}_{against}" for against in ("target", "source") for stem in ("precision", "recall", "acc", "lev")]
    assert set(names) <= set(METRICS) and set(names) <= set(DEFAULT_METRICS)
    assert lower_is_better("paper_lev_target") and lower_is_better("paper_lev_source")
    assert not any(lower_is_better(n) for n in names if "lev" not in n)
    assert all(METRICS[n].needs == {"ocr"} for n in names)
    out = compute(
        names, images=np.zeros((3, 8, 8, 3), np.uint8), source_images=None,
        source_texts=["stop", "cat", ""], target_texts=["pots", "Chat", ""], ocr_texts=["STOP", "cat", ""],
    )
    np.testing.assert_array_equal(out["paper_acc_target"], [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(out["paper_acc_source"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(out["paper_precision_target"], [4 / (4 + EPS), 3 / (3 + EPS), 0.0])
    np.testing.assert_array_equal(out["paper_recall_target"], [4 / (4 + EPS), 3 / (4 + EPS), 0.0])
    np.testing.assert_array_equal(out["paper_lev_target"], [4.0, 1.0, 0.0])
    np.testing.assert_array_equal(out["paper_lev_source"], [0.0, 0.0, 0.0])
    assert paper_set_f1(out["paper_precision_target"], out["paper_recall_target"]) == pytest.approx(
        2 * np.mean([1, 1, 0]) * np.mean([1, 0.75, 0]) / (np.mean([1, 1, 0]) + np.mean([1, 0.75, 0])), abs=1e-6)
