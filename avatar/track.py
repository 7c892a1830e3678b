"""Following one person through footage: subject tracking, scene cuts and One-Euro smoothing.

The subject is chosen once — the largest, most central face when tracking starts — and then followed by
position and size, so a bigger face walking in behind them is reported, not swapped in. Alignment anchors are
smoothed with a One-Euro filter run forwards and backwards (enrollment is offline, so the two passes cancel
each other's lag) and restarted at every scene cut and every gap in the track.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FaceBox:
    """Where a face's landmarks lie: centre (x, y) and size (the geometric mean of the box sides)."""

    centre: np.ndarray
    size: float

    @classmethod
    def of(cls, points: np.ndarray) -> FaceBox:
        low, high = points.min(axis=0), points.max(axis=0)
        width, height = np.maximum(high - low, 1e-3)
        return cls((low + high) / 2.0, float(math.sqrt(width * height)))


@dataclass(frozen=True)
class TrackStep:
    """The tracker's answer for one frame."""

    subject: np.ndarray | None  # (468, 2) landmarks of the subject, or None when not in view
    other_dominant: bool  # another face at least ``dominance`` times the subject's size is in view
    faces: int  # faces found in the frame


class SubjectTracker:
    """Follows one face through a sequence of frames.

    Args:
        frame_size: (width, height) of the frames.
        gate: how far (in subject face sizes) the subject's centre may move between frames it is seen in.
        size_ratio: how much (either way) its size may change between frames it is seen in.
        dominance: another face this many times the subject's size or more counts as dominant.
    """

    def __init__(self, frame_size: tuple[int, int], *, gate: float = 0.6, size_ratio: float = 1.6,
                 dominance: float = 0.9) -> None:
        self.frame_size = np.asarray(frame_size, np.float64)
        self.gate = gate
        self.size_ratio = size_ratio
        self.dominance = dominance
        self.last: FaceBox | None = None
        self.lost_frames = 0
        self._after_cut = False

    def reset(self) -> None:
        """After a scene cut: the next frame may find the subject anywhere near their last place and size
        (a wide gate); failing that, the opening rule chooses again."""
        self._after_cut = True

    def _opening_choice(self, boxes: list[FaceBox]) -> int:
        """The largest, most central face: size scaled down by up to half with distance from the centre."""
        half_diagonal = float(np.linalg.norm(self.frame_size / 2.0))
        scores = [box.size * (1.0 - 0.5 * min(1.0, float(np.linalg.norm(box.centre - self.frame_size / 2.0))
                                              / half_diagonal)) for box in boxes]
        return int(np.argmax(scores))

    def _follow(self, boxes: list[FaceBox], last: FaceBox, *, reach_sizes: float | None = None,
                size_ratio: float | None = None) -> int | None:
        """The face nearest the subject's last position, within the gate; the gate widens while it is lost."""
        reach = last.size * (reach_sizes or self.gate * (1.0 + min(self.lost_frames, 50) / 10.0))
        ratio_limit = size_ratio or self.size_ratio
        best: tuple[float, int] | None = None
        for index, box in enumerate(boxes):
            distance = float(np.linalg.norm(box.centre - last.centre))
            ratio = box.size / last.size
            if distance <= reach and 1.0 / ratio_limit <= ratio <= ratio_limit:
                if best is None or distance < best[0]:
                    best = (distance, index)
        return None if best is None else best[1]

    def update(self, faces: list[np.ndarray]) -> TrackStep:
        """Take one frame's faces (each (468, 2)) and say which, if any, is the subject."""
        boxes = [FaceBox.of(points) for points in faces]
        if not boxes:
            self.lost_frames += 1
            return TrackStep(None, False, 0)
        if self.last is None:
            chosen: int | None = self._opening_choice(boxes)
        elif self._after_cut:
            chosen = self._follow(boxes, self.last, reach_sizes=1.5, size_ratio=2.0)
            chosen = self._opening_choice(boxes) if chosen is None else chosen
        else:
            chosen = self._follow(boxes, self.last)
        self._after_cut = False
        if chosen is None:
            self.lost_frames += 1
            return TrackStep(None, True, len(boxes))  # faces in view, none of them the subject
        subject = boxes[chosen]
        self.last, self.lost_frames = subject, 0
        dominant = any(box.size >= self.dominance * subject.size for index, box in enumerate(boxes)
                       if index != chosen)
        return TrackStep(faces[chosen], dominant, len(boxes))


class CutDetector:
    """Finds the frames that start a new shot, online, from small grey thumbnails (h, w) uint8.

    A cut is a frame whose mean absolute difference to the previous one is at least ``floor`` grey levels and
    ``factor`` times the median difference seen so far (talking and head motion stay far below both).
    """

    def __init__(self, *, floor: float = 20.0, factor: float = 6.0) -> None:
        self.floor = floor
        self.factor = factor
        self._previous: np.ndarray | None = None
        self._differences: list[float] = []  # kept sorted, for the running median

    def update(self, thumbnail: np.ndarray) -> bool:
        """Whether this frame starts a new shot (the first frame does not)."""
        frame = thumbnail.astype(np.float32)
        previous, self._previous = self._previous, frame
        if previous is None:
            return False
        difference = float(np.abs(frame - previous).mean())
        typical = _sorted_median(self._differences)
        bisect.insort(self._differences, difference)
        return difference >= max(self.floor, self.factor * typical)


def _sorted_median(values: list[float]) -> float:
    """Median of an already sorted list (0 when empty), without re-sorting it each frame."""
    if not values:
        return 0.0
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


class OneEuroFilter:
    """The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) over a vector signal at a fixed rate.

    The cutoff rises with the signal's speed: still faces are smoothed hard (no jitter), moving ones lightly
    (little lag).
    """

    def __init__(self, rate_hz: float, *, min_cutoff_hz: float = 1.0, beta: float = 1.5,
                 derivative_cutoff_hz: float = 1.0) -> None:
        self.rate_hz = rate_hz
        self.min_cutoff_hz = min_cutoff_hz
        self.beta = beta
        self.derivative_cutoff_hz = derivative_cutoff_hz

    def _alpha(self, cutoff_hz: float | np.ndarray) -> float | np.ndarray:
        tau = 1.0 / (2.0 * math.pi * np.asarray(cutoff_hz))
        return 1.0 / (1.0 + tau * self.rate_hz)

    def run(self, signal: np.ndarray) -> np.ndarray:
        """Filter ``signal`` (T, D) forwards in time; returns the filtered copy."""
        out = np.empty_like(signal, dtype=np.float64)
        if signal.shape[0] == 0:
            return out
        previous = signal[0].astype(np.float64)
        speed = np.zeros_like(previous)
        out[0] = previous
        derivative_alpha = self._alpha(self.derivative_cutoff_hz)
        for index in range(1, signal.shape[0]):
            raw_speed = (signal[index] - previous) * self.rate_hz
            speed = speed + derivative_alpha * (raw_speed - speed)
            alpha = self._alpha(self.min_cutoff_hz + self.beta * np.abs(speed))
            previous = previous + alpha * (signal[index] - previous)
            out[index] = previous
        return out

    def run_both_ways(self, signal: np.ndarray) -> np.ndarray:
        """The mean of a forward and a backward pass: offline smoothing whose lags cancel."""
        return 0.5 * (self.run(signal) + self.run(signal[::-1])[::-1])


def smooth_track(anchors: np.ndarray, valid: np.ndarray, breaks: np.ndarray, rate_hz: float,
                 scale: float) -> np.ndarray:
    """One-Euro smoothing of anchors (N, K, 2) over each run of valid frames between breaks (cuts).

    ``scale`` (a face size in pixels) makes the filter's speed term independent of the footage resolution.
    Frames outside any run copy the nearest smoothed frame, so every frame has a usable transform.
    """
    count = anchors.shape[0]
    smoothed = anchors.astype(np.float64).copy()
    one_euro = OneEuroFilter(rate_hz)
    start = 0
    while start < count:
        if not valid[start]:
            start += 1
            continue
        end = start + 1
        while end < count and valid[end] and not breaks[end]:
            end += 1
        run = anchors[start:end].reshape(end - start, -1) / scale
        smoothed[start:end] = (one_euro.run_both_ways(run) * scale).reshape(end - start, *anchors.shape[1:])
        start = end
    valid_index = np.flatnonzero(valid)
    if valid_index.size:
        for index in np.flatnonzero(~valid):
            smoothed[index] = smoothed[valid_index[np.argmin(np.abs(valid_index - index))]]
    return smoothed
