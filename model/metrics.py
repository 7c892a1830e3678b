"""Quality metrics for rendered face crops: PSNR, SSIM, mouth sharpness, mouth-cavity share and lip-sync
correlation."""

from __future__ import annotations

import math

import cv2
import numpy as np

from avatar.landmarks import FACE_OVAL, LOWER_LIP_OUTER, UPPER_LIP_OUTER
from twincast.errors import InputError

# A pixel of the lips' box darker than this fraction of the face's median luma is open-mouth cavity. On the demo
# footage the cavity reads about 0.2 of the face's median, lips and their shadows 0.6 or more, teeth above 1.
CAVITY_LUMA_RATIO = 0.4
MOUTH_ROWS = (0.60, 0.95)  # the mouth and chin, as fractions of the aligned crop
MOUTH_COLS = (0.25, 0.75)


def mouth_box(crop_px: int) -> tuple[slice, slice]:
    """Row and column slices of the mouth region of an aligned crop."""
    return (slice(int(MOUTH_ROWS[0] * crop_px), int(MOUTH_ROWS[1] * crop_px)),
            slice(int(MOUTH_COLS[0] * crop_px), int(MOUTH_COLS[1] * crop_px)))


def psnr(rendered: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 images (inf when identical)."""
    error = np.mean((rendered.astype(np.float64) - truth.astype(np.float64)) ** 2)
    return math.inf if error == 0 else 10.0 * math.log10(255.0**2 / error)


def ssim(rendered: np.ndarray, truth: np.ndarray) -> float:
    """Structural similarity (Wang et al. 2004, eq. 13) with an 11×11 Gaussian window (σ = 1.5), per channel."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    scores = []
    for channel in range(rendered.shape[2]):
        x = rendered[..., channel].astype(np.float64)
        y = truth[..., channel].astype(np.float64)

        def blur(image: np.ndarray) -> np.ndarray:
            return cv2.GaussianBlur(image, (11, 11), 1.5, borderType=cv2.BORDER_REFLECT)

        mu_x, mu_y = blur(x), blur(y)
        var_x = blur(x * x) - mu_x**2
        var_y = blur(y * y) - mu_y**2
        cov = blur(x * y) - mu_x * mu_y
        index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
        scores.append(float(index.mean()))
    return float(np.mean(scores))


def high_frequency_energy(image: np.ndarray) -> float:
    """Mean squared Laplacian of the grey image: how much fine detail (edges of lips and teeth) it holds."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    return float(np.mean(cv2.Laplacian(grey, cv2.CV_64F, ksize=3) ** 2))


def sharpness_ratio(rendered: list[np.ndarray], truth: list[np.ndarray]) -> float:
    """High-frequency energy of the rendered mouths over the true mouths' (1.0 = as sharp; < 1 blurrier)."""
    true_energy = float(np.mean([high_frequency_energy(image) for image in truth]))
    rendered_energy = float(np.mean([high_frequency_energy(image) for image in rendered]))
    return rendered_energy / true_energy if true_energy > 0 else math.nan


def mouth_cavity_share(rgb: np.ndarray, points: np.ndarray, dark_ratio: float = CAVITY_LUMA_RATIO) -> float:
    """How open the mouth is, read from pixels: the share of dark cavity pixels in the lips' landmark box.

    The box is the axis-aligned bounding box (whole pixels, clipped to the image) of FaceMesh's outer-lip points
    (``UPPER_LIP_OUTER`` and ``LOWER_LIP_OUTER``, corners included). Luma is BT.601 (0.299 R + 0.587 G + 0.114 B,
    computed in float). The reference is the median luma of the pixels inside the face contour (the convex hull
    of ``FACE_OVAL``). Returns the fraction (0..1) of box pixels whose luma is below ``dark_ratio`` × that median.

    Scaling the image's brightness scales the pixels and the median alike, so the share does not move; an open
    mouth's cavity falls under the threshold while lips, teeth and a closed smile stay above it. The inner-lip
    landmark gap does not tell those apart on a smiling face (it reads the same over teeth and over a cavity).

    Args:
        rgb: an (H, W, 3) RGB image, uint8 or float.
        points: (468, 2) FaceMesh points of that image, in its pixel coordinates (x, y).
        dark_ratio: the cavity threshold as a fraction of the face's median luma, in (0, 1).

    Raises:
        InputError: the image, the points or ``dark_ratio`` are not of the expected shape or range, or the lips'
            box or the face contour holds no pixel of the image.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"mouth_cavity_share needs an (H, W, 3) RGB image; got shape {rgb.shape}")
    if points.ndim != 2 or points.shape[0] < 468 or points.shape[1] != 2:
        raise InputError(f"mouth_cavity_share needs (468, 2) FaceMesh points; got shape {points.shape}")
    if not 0 < dark_ratio < 1:
        raise InputError(f"dark_ratio must be in (0, 1); got {dark_ratio}")
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    height, width = luma.shape
    face = np.zeros((height, width), np.uint8)
    cv2.fillConvexPoly(face, np.round(points[list(FACE_OVAL)]).astype(np.int32), 1)
    lips = points[list(UPPER_LIP_OUTER + LOWER_LIP_OUTER)]
    x0, y0 = np.clip(np.floor(lips.min(axis=0)).astype(int), 0, (width, height))
    x1, y1 = np.clip(np.ceil(lips.max(axis=0)).astype(int) + 1, 0, (width, height))
    box = luma[y0:y1, x0:x1]
    if box.size == 0 or not face.any():
        raise InputError(f"the lips' box ({x0}..{x1}, {y0}..{y1}) or the face contour lies outside the "
                         f"{width}×{height} image")
    face_median = float(np.median(luma[face > 0]))
    return float(np.mean(box < dark_ratio * face_median))


def lagged_correlation(signal: np.ndarray, reference: np.ndarray, max_lag: int = 3) -> tuple[float, int]:
    """The best Pearson correlation of ``signal`` against ``reference`` over lags in ±max_lag frames.

    A positive lag means ``signal`` runs late. NaN samples are ignored. Returns (correlation, lag).
    """
    best = (-math.inf, 0)
    for lag in range(-max_lag, max_lag + 1):
        shifted = signal[lag:] if lag >= 0 else signal[:lag]
        base = reference[: len(reference) - lag] if lag >= 0 else reference[-lag:]
        valid = ~(np.isnan(shifted) | np.isnan(base))
        if valid.sum() < 3 or np.std(shifted[valid]) == 0 or np.std(base[valid]) == 0:
            continue
        correlation = float(np.corrcoef(shifted[valid], base[valid])[0, 1])
        if correlation > best[0]:
            best = (correlation, lag)
    return (best[0], best[1]) if best[0] > -math.inf else (math.nan, 0)
