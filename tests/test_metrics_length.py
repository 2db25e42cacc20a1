"""The length view (issue 11, part 4): does the reading have as many letters as the target word?

Character F1 and Levenshtein hide a leftover glyph: MILK -> CAT read as ``catn`` scores F1 0.86 and
one edit; ``length_match_target`` says plainly that the rendered word is one letter too long."""
from __future__ import annotations

import numpy as np
import pytest

from diffprobe.metrics import (
    DEFAULT_METRICS, METRICS, char_f1, compute, length_error, length_match, levenshtein, lower_is_better,
    rendered_length,
)


@pytest.mark.parametrize("ocr,text,n_read,match,error", [
    ("catn", "cat", 4, 0.0, 1.0),     # the leftover glyph of MILK -> CAT
    ("cat", "cat", 3, 1.0, 0.0),
    ("CAT", "cat", 3, 1.0, 0.0),      # case does not matter
    ("cot", "cat", 3, 1.0, 0.0),      # a wrong letter, the right length
    ("tac", "cat", 3, 1.0, 0.0),
    ("c a t", "cat", 3, 1.0, 0.0),    # whitespace is not drawn
    ("ca\tt\n", "cat", 3, 1.0, 0.0),
    ("ca", "cat", 2, 0.0, 1.0),       # too short
    ("", "cat", 0, 0.0, 3.0),         # nothing read
    ("hello", "cat", 5, 0.0, 2.0),
    ("", "", 0, 1.0, 0.0),            # nothing wanted, nothing read
    ("ab", "", 2, 0.0, 2.0),
    ("hello world", "helloworld", 10, 1.0, 0.0),
])
def test_known_answers(ocr, text, n_read, match, error):
    assert rendered_length(ocr) == n_read
    assert length_match(ocr, text) == match
    assert length_error(ocr, text) == error
    assert isinstance(length_match(ocr, text), float) and isinstance(length_error(ocr, text), float)


def test_f1_hides_what_the_length_view_shows():
    assert char_f1("catn", "cat") == pytest.approx(6 / 7)
    assert levenshtein("catn", "cat") == 1
    assert length_match("catn", "cat") == 0.0
    assert char_f1("cot", "cat") < char_f1("catn", "cat") and length_match("cot", "cat") == 1.0


def test_registered_like_the_others():
    for against in ("target", "source"):
        assert f"length_match_{against}" in DEFAULT_METRICS and f"length_error_{against}" in DEFAULT_METRICS
        assert METRICS[f"length_match_{against}"].needs == {"ocr"}
        assert METRICS[f"length_match_{against}"].against == against
        assert not lower_is_better(f"length_match_{against}")
        assert lower_is_better(f"length_error_{against}")
        assert lower_is_better(f"baseline_length_error_{against}")


def test_compute_scores_against_both_texts_from_one_reading():
    images = np.zeros((4, 8, 8, 3), np.uint8)
    out = compute(["length_match_target", "length_error_target", "length_match_source", "length_error_source"],
                  images=images, source_images=None, source_texts=["milk", "milk", "hello", "sun"],
                  target_texts=["cat", "cat", "king", "moon"], ocr_texts=["CATN", "cat", "", "mo on"])
    np.testing.assert_array_equal(out["length_match_target"], [0.0, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(out["length_error_target"], [1.0, 0.0, 4.0, 0.0])
    np.testing.assert_array_equal(out["length_match_source"], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(out["length_error_source"], [0.0, 1.0, 5.0, 1.0])
    assert out["length_match_target"].dtype == np.float64
