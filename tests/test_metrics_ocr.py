"""OCR through Tesseract on images rendered with PIL whose text is known."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from diffprobe.errors import DiffprobeError, MetricError
from diffprobe.metrics import char_f1, char_precision_recall, read_text, read_texts
from diffprobe.metrics import ocr

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
needs_tesseract = pytest.mark.skipif(not ocr.tesseract_available(), reason="tesseract-ocr not installed")


def render(text, size=(256, 96), font_size=48, bg=(255, 255, 255), fg=(0, 0, 0), frame=False):
    """A uint8 (H, W, 3) image with ``text`` centred, optionally inside a sign-like frame."""
    font = ImageFont.truetype(str(FONT), font_size) if FONT.exists() else ImageFont.load_default(size=font_size)
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    if frame:
        draw.rectangle([2, 2, size[0] - 3, size[1] - 3], outline=fg, width=4)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    xy = ((size[0] - (right - left)) / 2 - left, (size[1] - (bottom - top)) / 2 - top)
    draw.text(xy, text, font=font, fill=fg)
    return np.asarray(img)


@needs_tesseract
def test_clean_stop_reads_stop_with_f1_one():
    reading = read_text(render("STOP"))
    assert reading == "stop"
    assert char_f1(reading, "STOP") == 1.0


@needs_tesseract
def test_blank_image_reads_nothing_and_recall_is_zero():
    reading = read_text(np.full((64, 64, 3), 200, np.uint8))
    assert reading == ""
    assert char_precision_recall(reading, "stop")[1] == 0.0


@needs_tesseract
@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (render("STOP", size=(64, 32), font_size=14), "stop"),  # small: upscaled first
        (render("Coffee", bg=(30, 60, 160), fg=(250, 250, 80), frame=True), "coffee"),  # light on dark, framed
        (render("hello world", size=(320, 64), font_size=32), "hello world"),  # words joined by one space
    ],
    ids=["small", "framed-inverted", "two-words"],
)
def test_preprocessing_reads_hard_cases(image, expected):
    assert read_text(image) == expected


@needs_tesseract
def test_read_text_accepts_pil_and_read_texts_keeps_order():
    assert read_text(Image.fromarray(render("STOP"))) == "stop"
    batch = np.stack([render("STOP"), np.full((96, 256, 3), 255, np.uint8), render("GO")])
    assert read_texts(batch) == ["stop", "", "go"]
    assert read_texts(batch[:0]) == []


def test_missing_tesseract_says_how_to_install(monkeypatch):
    monkeypatch.setattr(ocr.pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(MetricError, match="apt-get install tesseract-ocr") as info:
        read_text(render("STOP"))
    assert isinstance(info.value, DiffprobeError)
    with pytest.raises(MetricError, match="apt-get install tesseract-ocr"):
        read_texts(np.stack([render("STOP")]))


def test_bad_image_shape_is_refused():
    with pytest.raises(MetricError, match="shaped"):
        read_texts(np.zeros((5,), np.uint8))
