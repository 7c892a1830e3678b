import numpy as np
import pytest

from model.metrics import lagged_correlation, psnr, sharpness_ratio, ssim


def test_psnr_and_ssim_of_identical_and_noisy_images() -> None:
    rng = np.random.default_rng(0)
    ramp = np.linspace(40, 200, 32)
    image = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1).astype(np.uint8)  # smooth, like skin
    assert psnr(image, image) == float("inf")
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = np.clip(image.astype(int) + rng.integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    assert 20 < psnr(noisy, image) < 30
    assert ssim(noisy, image) < 0.5


def test_blur_lowers_the_sharpness_ratio() -> None:
    import cv2

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    blurred = [cv2.GaussianBlur(image, (5, 5), 1.5) for image in images]
    assert sharpness_ratio(images, images) == pytest.approx(1.0)
    assert sharpness_ratio(blurred, images) < 0.3


def test_lagged_correlation_finds_the_delay() -> None:
    rng = np.random.default_rng(2)
    truth = rng.standard_normal(200)
    late = np.roll(truth, 2)
    late[:2] = np.nan
    correlation, lag = lagged_correlation(late, truth)
    assert lag == 2 and correlation == pytest.approx(1.0)
    assert lagged_correlation(truth, truth) == (pytest.approx(1.0), 0)
