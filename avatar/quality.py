"""Per-frame signals and quality flags of enrollment footage.

Every frame gets a bit mask of the reasons it is kept out of training and of the idle loop; a frame with no
bit set is usable. Signals (head pose, mouth opening, eye openness, speech) are measured for every frame with a
face; they drive the flags, the idle segments, the reference bank and the report.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar import align

# Reasons a frame is rejected, in bit order. Documented in the README's enrollment section.
# New reasons go at the end, so the bits of existing packs keep their meaning (the pack stores flags as uint8:
# "damaged" takes the last free bit).
FLAG_REASONS = ("no_face", "other_face_dominant", "low_confidence", "occluded_mouth", "extreme_pose",
                "motion_blur", "scene_cut", "damaged")
FLAG_BITS = {name: np.uint8(1 << bit) for bit, name in enumerate(FLAG_REASONS)}

# FaceMesh indices of each eye's outer and inner corner and its lid midpoints ("left" = image left).
_EYES = ((33, 133, 159, 145), (362, 263, 386, 374))
_PROBE_PX = 96  # the aligned crop the per-frame measures look at


@dataclass(frozen=True)
class FaceMeasures:
    """What one frame's face looks like: sharpness, the mouth's appearance and the landmark scale."""

    sharpness: float  # variance of the Laplacian over the aligned face (higher is sharper)
    mouth_patch: np.ndarray  # (MOUTH_BOX) float16 mouth region, normalised by the face's own mean and spread
    interocular_px: float


# Rows and columns of the mouth in the 96-px aligned probe crop (the template puts the nose tip at 0.52).
MOUTH_BOX = (slice(58, 80), slice(30, 66))


def measure_face(rgb: np.ndarray, points: np.ndarray) -> FaceMeasures:
    """Sharpness and mouth appearance of a face, measured on a small aligned crop so any resolution compares."""
    matrix = align.crop_transform(points, _PROBE_PX)
    crop = align.warp_crop(rgb, matrix, _PROBE_PX)
    grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    inner = slice(_PROBE_PX // 6, _PROBE_PX - _PROBE_PX // 6)
    sharpness = float(cv2.Laplacian(grey[inner, inner], cv2.CV_32F).var())
    face = crop[inner, inner].astype(np.float32)
    patch = (crop[MOUTH_BOX].astype(np.float32) - face.mean(axis=(0, 1))) / (face.std() + 1.0)
    left, right = points[[33, 263]]
    return FaceMeasures(sharpness, patch.astype(np.float16), float(np.linalg.norm(right - left)))


def occluded_mouths(patches: np.ndarray, mouth: np.ndarray, *, bins: int = 5, spread: float = 9.0,
                    ratio: float = 7.0) -> np.ndarray:
    """Frames whose mouth looks unlike the person's own mouth at the same opening (a hand, a microphone).

    Frames are grouped by mouth opening (quantile bins, so speech does not count as change) and each frame is
    compared with the nearest of the groups' median mouths (the landmarks may trail the picture by a frame at
    a speech onset, so its own group is not always the right one). The distances are pooled over all frames,
    so a long occlusion that fills one group cannot hide itself: a frame is an outlier when its distance
    exceeds the pooled median by ``spread`` robust standard deviations and is ``ratio`` times it.

    Args:
        patches: (N, h, w, 3) normalised mouth patches of the frames with a face.
        mouth: (N,) their mouth openings.
    """
    count = patches.shape[0]
    if count < 2 * bins:
        return np.zeros(count, bool)
    edges = np.quantile(mouth, np.linspace(0, 1, bins + 1)[1:-1])
    group = np.searchsorted(edges, mouth)
    stack = patches.astype(np.float32)
    medians = [np.median(stack[group == index], axis=0) for index in range(bins) if np.any(group == index)]
    distance = np.min([np.abs(stack - median).mean(axis=(1, 2, 3)) for median in medians], axis=0)
    typical = float(np.median(distance))
    mad = 1.4826 * float(np.median(np.abs(distance - typical)))
    return (distance > typical + spread * mad) & (distance > ratio * typical)


def eye_openness(points: np.ndarray) -> float:
    """Mean eye aspect ratio (lid gap over eye width) of both eyes; it drops towards 0 in a blink."""
    ratios = []
    for outer, inner, top, bottom in _EYES:
        width = float(np.linalg.norm(points[outer] - points[inner]))
        ratios.append(float(np.linalg.norm(points[top] - points[bottom])) / width if width > 0 else 0.0)
    return float(np.mean(ratios))


def speech_frames(audio_16k: np.ndarray, frame_count: int, samples_per_frame: int, *, floor_dbfs: float = -50.0,
                  above_noise_db: float = 12.0, hangover: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Speech or silence per video frame from the 16 kHz track, and each frame's level in dBFS.

    A frame is speech when its RMS is ``above_noise_db`` over the clip's noise floor (its 5th percentile) and
    over ``floor_dbfs``; gaps of up to ``hangover`` frames inside speech count as speech (the pauses between
    syllables are not silence).
    """
    frames = audio_16k[: frame_count * samples_per_frame].reshape(frame_count, samples_per_frame)
    level = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    threshold = max(floor_dbfs, float(np.percentile(level, 5)) + above_noise_db)
    speech = level > threshold
    on = np.flatnonzero(speech)
    for left, right in zip(on[:-1], on[1:], strict=True):
        if 1 < right - left <= hangover + 1:
            speech[left:right] = True
    return speech, level.astype(np.float32)


def robust_low(values: np.ndarray, ratio: float) -> float:
    """The level under which a value is an outlier on the low side: ``ratio`` × the median."""
    return ratio * float(np.median(values)) if values.size else 0.0


def idle_segments(mouth: np.ndarray, speech: np.ndarray, valid: np.ndarray, anchors: np.ndarray, *, fps: int,
                  min_s: float, loop_jump: float = 0.03, enter: float = 0.3, leave: float = 0.5,
                  smooth_frames: int = 5) -> list[dict[str, object]]:
    """Stretches of usable frames with a closed mouth in silence, at least ``min_s`` long.

    "Closed" is judged on the mouth opening median-filtered over ``smooth_frames`` frames, with hysteresis: a
    stretch starts when the opening is at most ``enter`` of the way from the clip's closed level (10th
    percentile) to its open level (90th) and ends only once it passes ``leave`` of the way. A closed mouth's
    landmarks jitter by about a hundredth of the eye distance from frame to frame, and from one CPU to another,
    which is as much as a single threshold's margin when the idle footage itself sets the closed level; the
    median and the hysteresis keep such jitter from splitting a stretch, while any real opening still ends it.

    Each comes with how it may loop without a jump: ``loop`` when its last frame's face sits within
    ``loop_jump`` face widths of its first (it can wrap around), ``ping-pong`` otherwise (played forwards then
    backwards, which never jumps).
    """
    usable = valid & ~speech
    if not usable.any():
        return []
    low, high = np.percentile(mouth[valid], [10, 90]) if valid.any() else (0.0, 0.0)
    smoothed = median_filter_1d(mouth, smooth_frames)
    enter_level, leave_level = low + enter * (high - low), low + leave * (high - low)
    segments: list[dict[str, object]] = []
    start = None
    for index in range(len(mouth) + 1):
        closing = start is not None and index < len(mouth) and smoothed[index] <= leave_level
        opening = start is None and index < len(mouth) and smoothed[index] <= enter_level
        if index < len(mouth) and usable[index] and (closing or opening):
            start = index if start is None else start
            continue
        if start is not None and index - start >= min_s * fps:
            first, last = anchors[start], anchors[index - 1]
            width = float(np.linalg.norm(first[1] - first[0])) or 1.0
            jump = float(np.linalg.norm(last - first, axis=-1).max()) / width
            segments.append({"start": start, "end": index, "loop": "loop" if jump <= loop_jump else "ping-pong",
                             "jump": round(jump, 4)})
        start = None
    return segments


def median_filter_1d(values: np.ndarray, window: int) -> np.ndarray:
    """Running median over ``window`` samples (odd; the ends repeat the edge values)."""
    if window <= 1 or values.size == 0:
        return values.astype(np.float64)
    half = window // 2
    padded = np.pad(values.astype(np.float64), half, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1), axis=1)


def reference_bank(features: np.ndarray, candidates: np.ndarray, first: int, size: int) -> list[int]:
    """Frames spread over poses and mouth shapes: farthest-point sampling from ``first``.

    Args:
        features: (N, D) per-frame features (head pose, mouth opening), NaN-free on the candidates.
        candidates: frame indices to choose from.
        first: the frame to start from (the main reference).
        size: how many frames to return at most.
    """
    if candidates.size == 0:
        return []
    chosen = [first]
    points = features[candidates].astype(np.float64)
    spread = points.std(axis=0)
    points = points / np.where(spread > 1e-9, spread, 1.0)
    distance = np.linalg.norm(points - points[np.searchsorted(candidates, first)], axis=1)
    while len(chosen) < min(size, candidates.size):
        pick = int(np.argmax(distance))
        if distance[pick] <= 0:
            break
        chosen.append(int(candidates[pick]))
        distance = np.minimum(distance, np.linalg.norm(points - points[pick], axis=1))
    return chosen
