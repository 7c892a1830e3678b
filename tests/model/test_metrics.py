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


def _face(mouth: str, brightness: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A 128² face-like image and its 468 'FaceMesh' points: skin oval, red lips, and inside them a dark cavity
    (``open``), a row of teeth (``teeth``, a smile) or nothing (``closed``), all scaled by ``brightness``."""
    import cv2

    from avatar.landmarks import FACE_OVAL, LOWER_LIP_OUTER, UPPER_LIP_OUTER

    image = np.full((128, 128, 3), (200, 200, 210), np.float32)
    cv2.ellipse(image, (64, 60), (40, 52), 0, 0, 360, (220, 170, 150), -1)
    cv2.ellipse(image, (64, 92), (18, 9), 0, 0, 360, (170, 80, 90), -1)  # the lips
    inside = {"open": (40, 15, 20), "teeth": (235, 230, 220), "closed": (170, 80, 90)}[mouth]
    cv2.ellipse(image, (64, 92), (14, 5), 0, 0, 360, inside, -1)
    points = np.zeros((468, 2), np.float32)
    oval = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    points[list(FACE_OVAL)] = np.stack([64 + 40 * np.sin(oval), 60 - 52 * np.cos(oval)], axis=1)
    lips = list(UPPER_LIP_OUTER + LOWER_LIP_OUTER)
    around = np.linspace(0, 2 * np.pi, len(lips), endpoint=False)
    points[lips] = np.stack([64 + 18 * np.cos(around), 92 + 9 * np.sin(around)], axis=1)
    return np.clip(image * brightness, 0, 255).round().astype(np.uint8), points


def test_mouth_cavity_share_tells_an_open_mouth_from_teeth_at_any_brightness() -> None:
    from model.metrics import mouth_cavity_share

    shares = {mouth: mouth_cavity_share(*_face(mouth)) for mouth in ("open", "teeth", "closed")}
    # The cavity is the inner ellipse: about a third of the lips' box (π·14·5 / (37·19) ≈ 0.31, plus its rim).
    assert 0.2 < shares["open"] < 0.4, shares
    assert shares["teeth"] == 0 and shares["closed"] == 0, shares
    for brightness in (0.45, 1.15):  # a darker and a brighter exposure (the teeth clip at 255)
        for mouth, share in shares.items():
            assert mouth_cavity_share(*_face(mouth, brightness)) == pytest.approx(share, abs=0.01), (mouth, brightness)


def test_mouth_cavity_share_names_bad_input() -> None:
    from model.metrics import mouth_cavity_share
    from twincast.errors import InputError

    image, points = _face("open")
    with pytest.raises(InputError, match=r"\(H, W, 3\) RGB image; got shape \(128, 128\)"):
        mouth_cavity_share(image[..., 0], points)
    with pytest.raises(InputError, match=r"\(468, 2\) FaceMesh points; got shape \(10, 2\)"):
        mouth_cavity_share(image, points[:10])
    with pytest.raises(InputError, match="outside the 128×128 image"):
        mouth_cavity_share(image, points + 500)
