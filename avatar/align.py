"""Alignment of faces to a canonical crop, and the inverse: pasting a rendered crop back into its frame.

The crop template puts the eye centres and the nose tip at fixed fractions of the crop, so every frame's
face lands in the same place; the lower part of the crop (from ``mask_top``) is what the model renders.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

from avatar.landmarks import NOSE_TIP, eye_centres

# Unit-square positions of (left eye centre, right eye centre, nose tip) in the aligned crop.
TEMPLATE = np.array([[0.35, 0.33], [0.65, 0.33], [0.50, 0.52]], dtype=np.float64)


def anchor_points(points: np.ndarray) -> np.ndarray:
    """The three alignment anchors of a (468, 2) landmark array: eye centres and nose tip."""
    left, right = eye_centres(points)
    return np.stack([left, right, points[NOSE_TIP]]).astype(np.float64)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``source`` onto ``target``.

    Umeyama, "Least-squares estimation of transformation parameters between two point patterns", 1991, eq. 40-42.
    Returns a 2x3 float64 matrix.
    """
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    covariance = centred_t.T @ centred_s / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rotation = u @ sign @ vt
    variance_s = (centred_s**2).sum() / len(source)
    scale = float(np.trace(np.diag(singular) @ sign) / variance_s)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_t - scale * rotation @ mean_s
    return matrix


def crop_transform(points: np.ndarray, crop_px: int) -> np.ndarray:
    """The 2x3 matrix taking frame pixels to aligned-crop pixels for a face's landmarks."""
    return similarity_transform(anchor_points(points), TEMPLATE * crop_px)


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix."""
    return cv2.invertAffineTransform(matrix.astype(np.float64))


def warp_crop(frame: np.ndarray, matrix: np.ndarray, crop_px: int) -> np.ndarray:
    """Cut the aligned crop out of an RGB frame."""
    return cv2.warpAffine(frame, matrix.astype(np.float64), (crop_px, crop_px), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT101)


@functools.lru_cache(maxsize=16)
def paste_mask(crop_px: int, mask_top: float) -> np.ndarray:
    """Feathered paste-back mask in crop space, float32 (crop_px, crop_px) in [0, 1].

    It covers the lower face (an ellipse below ``mask_top``), eroded away from the crop border so the
    warped crop's edges never show, and feathered so the seam is invisible.
    """
    size = crop_px
    mask = np.zeros((size, size), np.float32)
    centre = (int(round(0.5 * size)), int(round(0.74 * size)))
    axes = (int(round(0.40 * size)), int(round(0.30 * size)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, thickness=-1)
    mask[: int(round((mask_top - 0.02) * size)), :] = 0.0
    border = max(1, int(round(0.03 * size)))
    mask[:border, :] = mask[-border:, :] = 0.0
    mask[:, :border] = mask[:, -border:] = 0.0
    sigma = max(0.5, 0.035 * size)
    return cv2.GaussianBlur(mask, (0, 0), sigmaX=sigma, sigmaY=sigma)


def paste_back(frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Composite a rendered crop into a copy of its frame with the inverse warp and a feathered mask.

    Args:
        frame: RGB uint8 (H, W, 3), the base frame.
        crop: RGB uint8 (crop_px, crop_px, 3), the rendered face crop.
        matrix: the 2x3 frame→crop transform of the base frame.
        mask: float32 (crop_px, crop_px) paste mask.

    Returns:
        A new RGB uint8 frame.
    """
    height, width = frame.shape[:2]
    inverse = invert(matrix)
    size = crop.shape[0]
    corners = np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64) @ inverse.T
    x0, y0 = np.floor(corners.min(axis=0)).astype(int)
    x1, y1 = np.ceil(corners.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    shifted = inverse.copy()
    shifted[:, 2] -= (x0, y0)
    roi_size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(crop, shifted, roi_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(mask, shifted, roi_size, flags=cv2.INTER_LINEAR, borderValue=0.0)[..., None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    out[y0:y1, x0:x1] = (region + alpha * (warped.astype(np.float32) - region) + 0.5).astype(np.uint8)
    return out
