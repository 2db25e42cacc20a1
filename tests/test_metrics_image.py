"""MSE, PSNR and SSIM against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from diffprobe.errors import MetricError
from diffprobe.metrics import moved, mse, psnr, ssim

C1 = (0.01 * 255) ** 2  # SSIM's luminance constant for data_range 255


def constant(value, shape=(16, 16, 3)):
    return np.full(shape, value, dtype=np.uint8)


def test_constant_images_differing_by_ten():
    a, b = constant(100), constant(110)
    assert mse(a, b) == 100.0
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    # constant images: contrast and structure terms are 1, luminance (2*mu_a*mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    assert ssim(a, b) == pytest.approx((2 * 100 * 110 + C1) / (100**2 + 110**2 + C1))


def test_uint8_values_do_not_wrap_around():
    a, b = constant(3), constant(5)
    assert mse(a, b) == 4.0  # uint8 subtraction would give 254**2
    assert mse(b, a) == 4.0


def test_identical_images():
    img = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    assert mse(img, img) == 0.0
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0)


def test_mse_hand_computed_on_mixed_pixels():
    a = np.array([[0, 255], [10, 20]], dtype=np.uint8)
    b = np.array([[255, 0], [20, 10]], dtype=np.uint8)
    expected = (255**2 + 255**2 + 100 + 100) / 4
    assert mse(a, b) == expected
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / expected))


def test_ssim_handles_small_and_greyscale_images():
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert ssim(small, small) == pytest.approx(1.0)
    grey = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    assert -1.0 <= ssim(grey, 255 - grey) < 1.0
    with pytest.raises(MetricError, match="3x3"):
        ssim(constant(1, (2, 2, 3)), constant(1, (2, 2, 3)))


def test_shape_mismatch_is_refused():
    with pytest.raises(MetricError, match="same shape"):
        mse(constant(0, (4, 4, 3)), constant(0, (4, 5, 3)))


def test_moved_is_the_share_of_the_way_from_source_to_target_hand_computed():
    src, tgt = constant(10), constant(30)
    assert moved(src, src, tgt) == 0.0 and moved(tgt, src, tgt) == 1.0
    assert moved(constant(20), src, tgt) == pytest.approx(1 - 100 / 400)  # half-way in value: 3/4 of the MSE
    assert moved(constant(50), src, tgt) == pytest.approx(1 - 400 / 400)   # past the target, as far from it as src
    assert moved(constant(0), src, tgt) == pytest.approx(1 - 900 / 400)    # away from both: negative
    assert math.isnan(moved(tgt, src, src.copy()))                          # identical references: nothing to move to
    with pytest.raises(MetricError, match="same shape"):
        moved(src, src, constant(30, (8, 8, 3)))
