"""How much of the source image an intervention kept: MSE, PSNR and SSIM against the unpatched image.

A good text edit changes the glyphs and little else, so the edited image is compared with the
image the same seed gives without the intervention. All three metrics work on 0-255 pixel values
converted to float64 *before* subtracting: the paper's public code subtracted uint8 arrays,
which wraps around (``np.uint8(3) - np.uint8(5) == 254``) and inflates the error.

    MSE  = mean((a - b)^2)
    PSNR = 10 log10(255^2 / MSE)      (inf for identical images)
    SSIM = structural similarity (Wang et al. 2004) via scikit-image, data_range=255,
           colour channels averaged (channel_axis=-1), 7x7 window shrunk to fit small images.

    moved = 1 - MSE(image, target) / MSE(source, target)
           how far an image moved from the unpatched source image towards the unpatched *target* image
           (the target prompt's, same seed), from pixels alone: 0 = unchanged, 1 = the target's image,
           NaN when the two unpatched images are identical (nothing to move towards).

``mse``, ``psnr`` and ``ssim`` take one pair of images of the same shape, (height, width, 3) or (height,
width); ``moved`` takes three. ``moved`` ranks sites where OCR reads little: a small model's own target
images may read ~0.5, and OCR F1 of a few pairs then ranks noise, while the pixels still show which site
carried the target prompt into the image.
"""
from __future__ import annotations

import numpy as np
from jaxtyping import Shaped

from diffprobe.errors import MetricError

__all__ = ["mse", "psnr", "ssim", "moved"]

MAX_VALUE = 255.0
Image = Shaped[np.ndarray, "height width *channel"]


def mse(a: Image, b: Image) -> float:
    """Mean squared error between two images on 0-255 values, computed in float64."""
    x, y = _pair(a, b, "mse")
    return float(np.mean((x - y) ** 2))


def psnr(a: Image, b: Image) -> float:
    """Peak signal-to-noise ratio in dB with peak 255; ``inf`` for identical images."""
    err = mse(a, b)
    if err == 0.0:
        return float("inf")
    return float(10.0 * np.log10(MAX_VALUE**2 / err))


def ssim(a: Image, b: Image) -> float:
    """Structural similarity (scikit-image, data_range=255), averaged over colour channels."""
    from skimage.metrics import structural_similarity

    x, y = _pair(a, b, "ssim")
    side = min(x.shape[:2])
    if side < 3:
        raise MetricError(f"ssim needs images at least 3x3 pixels; got shape {x.shape}.")
    win = min(7, side if side % 2 else side - 1)
    channel_axis = -1 if x.ndim == 3 else None
    return float(structural_similarity(x, y, data_range=MAX_VALUE, channel_axis=channel_axis, win_size=win))


def moved(image: Image, source: Image, target: Image) -> float:
    """``1 - MSE(image, target) / MSE(source, target)``: 0 for the source image, 1 for the target image,
    negative when the image moved away from both; NaN when source and target are identical."""
    x, s = _pair(image, source, "moved")
    _, t = _pair(image, target, "moved")
    span = float(np.mean((s - t) ** 2))
    if span == 0.0:
        return float("nan")
    return 1.0 - float(np.mean((x - t) ** 2)) / span


def _pair(a: Image, b: Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise MetricError(f"{name} needs two images of the same shape; got {x.shape} and {y.shape}.")
    if x.ndim not in (2, 3):
        raise MetricError(f"{name} expects one image shaped (height, width[, channel]); got shape {x.shape}.")
    return x, y
