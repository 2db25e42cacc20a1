"""OCR reads every clean rendering of the embedded glyph model exactly, and stays generic.

The first test renders all template x word combinations from the model's own renderer
(``diffprobe.zoo.glyph.data``) and asserts an exact read of each: a misread there would be the
instrument's fault, not the model's. The others render the same kind of sign with other fonts
(the three DejaVu bold faces), decorations the glyph model does not use, and a cluttered scene, so
the preprocessing is not tuned to six templates."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from diffprobe.metrics import ocr, read_text, read_texts
from diffprobe.zoo.glyph import data

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
FACES = ("DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf")
needs_tesseract = pytest.mark.skipif(not ocr.tesseract_available(), reason="tesseract-ocr not installed")
needs_fonts = pytest.mark.skipif(not all((DEJAVU / f).exists() for f in FACES), reason="fonts-dejavu-core not installed")


@needs_tesseract
def test_every_clean_glyph_rendering_reads_exactly():
    combos = [(t, w) for t in range(len(data.TEMPLATES)) for w in data.WORDS]
    assert len(combos) == len(data.TEMPLATES) * len(data.WORDS) == 192
    images = np.stack([np.asarray(data.render(t, w)) for t, w in combos])
    readings = read_texts(images)
    misread = [(data.TEMPLATES[t].name, w, r) for (t, w), r in zip(combos, readings) if r != w.lower()]
    assert not misread, f"{len(misread)} of {len(combos)} clean renderings misread: {misread}"


def sign(word, face, decoration, bg=(30, 60, 170), fg=(255, 210, 40), size=(96, 32)):
    """A small sign like the glyph model's, in another face and with another decoration."""
    w, h = size
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    if decoration == "thick":
        d.rectangle([0, 0, w - 1, h - 1], outline=fg, width=3)
    elif decoration == "double":
        d.rectangle([0, 0, w - 1, h - 1], outline=fg, width=1)
        d.rectangle([3, 3, w - 4, h - 4], outline=fg, width=1)
    elif decoration == "stripes":
        d.rectangle([0, 0, w - 1, 2], fill=fg)
        d.rectangle([0, h - 3, w - 1, h - 1], fill=fg)
    elif decoration == "rules":  # thin rules just above and below the text
        d.line([4, 3, w - 5, 3], fill=fg, width=1)
        d.line([4, h - 4, w - 5, h - 4], fill=fg, width=1)
    elif decoration == "dashed":
        for x in range(2, w - 2, 8):
            d.line([x, 2, x + 4, 2], fill=fg)
            d.line([x, h - 3, x + 4, h - 3], fill=fg)
    elif decoration == "corners":
        for x, y, dx, dy in [(2, 2, 1, 1), (w - 3, 2, -1, 1), (2, h - 3, 1, -1), (w - 3, h - 3, -1, -1)]:
            d.line([x, y, x + 6 * dx, y], fill=fg, width=2)
            d.line([x, y, x, y + 6 * dy], fill=fg, width=2)
    font_size = 24
    while True:
        font = ImageFont.truetype(str(DEJAVU / face), font_size)
        left, _, right, _ = d.textbbox((0, 0), word, font=font)
        if right - left <= w - 16:
            break
        font_size -= 1
    top, bottom = font.getbbox("H")[1], font.getbbox("H")[3]
    d.text(((w - (right - left)) // 2 - left, (h - (bottom - top)) // 2 - top), word, fill=fg, font=font)
    return np.asarray(img)


DECORATIONS = ("thick", "double", "stripes", "rules", "dashed", "corners")
WORDS = ("QUIZ", "PIZZA", "JUMP", "GYM", "HELLO", "TAXI")


@needs_tesseract
@needs_fonts
@pytest.mark.parametrize("face", FACES)
def test_other_faces_and_decorations(face):
    """Every decoration once per face, each with a different word (a Q's tail on a rule, descenders, I)."""
    shift = FACES.index(face)
    cases = [(deco, WORDS[(i + shift) % len(WORDS)]) for i, deco in enumerate(DECORATIONS)]
    readings = read_texts(np.stack([sign(word, face, deco) for deco, word in cases]))
    misread = [(deco, word, r) for (deco, word), r in zip(cases, readings) if r != word.lower()]
    assert not misread, misread


@needs_tesseract
@needs_fonts
def test_sign_in_a_cluttered_scene():
    """A framed sign on a noisy, gradient scene with clutter touching the image edges."""
    rng = np.random.default_rng(0)
    h, w = 240, 360
    scene = np.linspace(40, 200, w)[None, :, None] * np.ones((h, 1, 3)) + rng.normal(0, 12, (h, w, 3))
    img = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.rectangle([0, 180, 120, 239], fill=(60, 90, 40))  # a bush at the lower left edge
    d.ellipse([280, -40, 400, 60], fill=(230, 220, 120))  # a sun cut by the top right corner
    d.rectangle([172, 150, 188, 239], fill=(90, 70, 50))  # the post, down to the bottom edge
    d.rectangle([90, 70, 270, 150], fill=(200, 30, 30), outline=(255, 255, 255), width=5)
    font = ImageFont.truetype(str(DEJAVU / FACES[0]), 44)
    left, top, right, bottom = d.textbbox((0, 0), "STOP", font=font)
    d.text((180 - (right - left) / 2 - left, 110 - (bottom - top) / 2 - top), "STOP", fill="white", font=font)
    assert read_text(np.asarray(img)) == "stop"
