"""Reading the text a diffusion model drew, with Tesseract.

Why OCR: a text edit succeeded when the image *says* the target word, so every text metric in
diffprobe starts from what an OCR engine reads off the generated image. The paper used EasyOCR;
diffprobe uses Tesseract (through ``pytesseract``) because it is a small Debian package that runs
on any CPU without downloading weights.

Tesseract is tuned for scanned documents: dark, fairly large glyphs on a light page. Generated
images are small, coloured, and usually show one word on a sign inside a scene. So each image
goes through a short preprocessing chain before Tesseract sees it:

1. **Upscale** so the short side is at least ``MIN_SIDE`` pixels (Lanczos); a 64 px glyph image
   from a tiny model is otherwise below Tesseract's working size.
2. **Crop the border** (``BORDER`` of each side) so a sign's frame is not read as ``|`` or ``l``.
3. **Otsu threshold** (scikit-image) to black and white; whichever colour covers most of the
   crop is taken as background and made white, so light text on a dark sign works too.
4. **Tight crop** around the ink with white padding, which is what Tesseract's single-line mode
   (``--psm 7``) wants.

Then Tesseract runs as a single line (``--psm 7``); when that finds nothing confident it tries a
uniform block (``--psm 6``) and sparse text on the plain grey image (``--psm 11``), and keeps the
most confident reading. The result is lower-cased, its detections joined by single spaces and
stripped: ``read_text(img) == "stop"``. An image with no contrast reads as ``""``.
"""
from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from typing import Union

import numpy as np
import pytesseract
from jaxtyping import UInt8
from PIL import Image

from diffprobe.errors import MetricError

__all__ = ["read_text", "read_texts", "tesseract_available", "INSTALL_HINT"]

INSTALL_HINT = (
    "Install it with `apt-get install tesseract-ocr` (Debian/Ubuntu) or `brew install tesseract` "
    "(macOS), or point pytesseract.pytesseract.tesseract_cmd at the binary."
)
MIN_SIDE = 256  # pixels on the short side after upscaling
BORDER = 0.04  # fraction of each side cropped away before thresholding
PAD = 16  # white padding (pixels) around the tight crop
CONFIDENT = 60.0  # mean Tesseract word confidence (0-100) accepted without trying fallbacks

ImageLike = Union[UInt8[np.ndarray, "height width 3"], UInt8[np.ndarray, "height width"], Image.Image]


def tesseract_available() -> bool:
    """Whether the Tesseract binary pytesseract is configured to call can be found."""
    return shutil.which(pytesseract.pytesseract.tesseract_cmd) is not None


def read_text(image: ImageLike) -> str:
    """The text Tesseract reads in one image: lower-case, words joined by single spaces, stripped."""
    _require_tesseract()
    grey = _upscale(_to_grey(image))
    clean = _binarize(grey)
    if clean is None:  # no contrast: nothing drawn that could be text
        return ""
    candidates = [(clean, 7), (clean, 6), (grey, 11)]
    best_text, best_conf = "", -1.0
    for img, psm in candidates:
        text, conf = _tesseract(img, psm)
        if text and conf >= CONFIDENT:
            return text
        if text and conf > best_conf:
            best_text, best_conf = text, conf
    return best_text


def read_texts(images: UInt8[np.ndarray, "sample height width 3"], workers: int | None = None) -> list[str]:
    """``read_text`` for each image of a batch, in order; Tesseract processes run in parallel."""
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise MetricError(f"read_texts expects images shaped (sample, height, width[, 3]); got shape {images.shape}.")
    if len(images) == 0:
        return []
    _require_tesseract()
    workers = workers or min(4, len(images))
    if workers == 1:
        return [read_text(img) for img in images]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(read_text, images))


def _require_tesseract() -> None:
    if not tesseract_available():
        cmd = pytesseract.pytesseract.tesseract_cmd
        raise MetricError(f"Tesseract OCR binary not found (looked for {cmd!r}). {INSTALL_HINT}")


def _to_grey(image: ImageLike) -> np.ndarray:
    """Any supported image as a float64 greyscale array in 0-255."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.float64)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        if arr.dtype != np.uint8:
            raise MetricError(f"read_text expects uint8 pixel values; got dtype {arr.dtype}.")
        return np.asarray(Image.fromarray(arr).convert("L"), dtype=np.float64)
    if arr.ndim == 2:
        return arr.astype(np.float64)
    raise MetricError(f"read_text expects an image shaped (height, width, 3) or (height, width); got {arr.shape}.")


def _upscale(grey: np.ndarray) -> np.ndarray:
    short = min(grey.shape)
    if short >= MIN_SIDE or short == 0:
        return grey
    scale = MIN_SIDE / short
    size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
    img = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).resize(size, Image.LANCZOS)
    return np.asarray(img, dtype=np.float64)


def _binarize(grey: np.ndarray) -> np.ndarray | None:
    """Border-cropped, Otsu-thresholded, dark-on-white, tightly cropped and padded; None if flat."""
    from skimage.filters import threshold_otsu

    h, w = grey.shape
    dy, dx = int(h * BORDER), int(w * BORDER)
    crop = grey[dy : h - dy, dx : w - dx]
    if crop.size == 0 or crop.max() - crop.min() < 16:
        return None
    ink = crop <= threshold_otsu(crop)
    if ink.mean() > 0.5:  # the majority colour is background
        ink = ~ink
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    tight = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    out = np.pad(tight, PAD, constant_values=False)
    return np.where(out, 0, 255).astype(np.uint8)


def _tesseract(image: np.ndarray, psm: int) -> tuple[str, float]:
    """Tesseract's words (lower-cased, space-joined) and their mean confidence."""
    try:
        data = pytesseract.image_to_data(
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)),
            config=f"--psm {psm}",
            output_type=pytesseract.Output.DICT,
        )
    except pytesseract.TesseractNotFoundError:
        _require_tesseract()
        raise
    words, confs = [], []
    for word, conf in zip(data["text"], data["conf"]):
        word = word.strip()
        if word and float(conf) >= 0:
            words.append(word.lower())
            confs.append(float(conf))
    text = " ".join(" ".join(words).split())
    return text, (float(np.mean(confs)) if confs else -1.0)
