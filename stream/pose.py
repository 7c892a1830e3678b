"""Pose drivers: which base frame (head pose, blinks, upper face) session frame *n* is rendered over.

Drivers: the footage loop (ping-pong over the pack's idle loop, blinks kept), a still frame, a scripted pose
(nearest base frame to a requested yaw/pitch/roll), and the operator's webcam (the same, fed continuously).
The ``PoseController`` switches between them; whenever it returns to the loop it continues from the base frame
on screen, so no switch (and no lost webcam) makes the head jump.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

from stream.stats import PoseStats
from twincast.errors import InputError

WEBCAM_TIMEOUT_S = 1.0  # no webcam pose for this long: fall back to the loop
POSE_SMOOTHING = 0.3  # EMA weight of a new webcam pose
SWITCH_MARGIN_DEG = 0.3  # hysteresis: a new base frame must be this much closer to be chosen


class PoseDriver(Protocol):
    """Maps a session frame index to an index into the pack's base loop."""

    def base_index(self, frame_index: int) -> int:
        """The base frame for session frame ``frame_index``."""
        ...


class LoopPose:
    """Ping-pong over the base loop (forward then backward), so the loop point never jumps."""

    def __init__(self, base_count: int) -> None:
        if base_count < 1:
            raise InputError("the pack's base loop is empty")
        self.base_count = base_count
        self.offset = 0

    def continue_from(self, base_index: int, frame_index: int) -> None:
        """Continue the loop forward from ``base_index`` at session frame ``frame_index``."""
        period = max(1, 2 * (self.base_count - 1))
        self.offset = (base_index - frame_index) % period

    def base_index(self, frame_index: int) -> int:
        if self.base_count == 1:
            return 0
        period = 2 * (self.base_count - 1)
        position = (frame_index + self.offset) % period
        return position if position < self.base_count else period - position


class StillPose:
    """Always the same base frame: a still head (useful for tests and for presenters who sit still)."""

    def __init__(self, base_count: int, index: int = 0) -> None:
        if not 0 <= index < base_count:
            raise InputError(f"still pose index {index} is outside the base loop 0..{base_count - 1}")
        self.index = index

    def base_index(self, frame_index: int) -> int:
        return self.index


class TargetPose:
    """The base frame whose head pose is nearest a target (yaw, pitch, roll), smoothed and with hysteresis."""

    def __init__(self, base_poses: np.ndarray, now: Callable[[], float] = time.monotonic) -> None:
        valid = ~np.isnan(base_poses).any(axis=1)
        if not valid.any():
            raise InputError("the pack's base loop has no head poses to match")
        self.base_poses = np.where(valid[:, None], base_poses, 1e6)
        self._now = now
        self.target: np.ndarray | None = None
        self.updated_at = -math.inf
        self._current = int(np.flatnonzero(valid)[0])

    def update(self, pose: tuple[float, float, float], *, smooth: bool = True) -> None:
        """Move the target toward ``pose`` (degrees); NaN poses are ignored."""
        value = np.asarray(pose, np.float64)
        if np.isnan(value).any():
            return
        if self.target is None or not smooth:
            self.target = value
        else:
            self.target = (1 - POSE_SMOOTHING) * self.target + POSE_SMOOTHING * value
        self.updated_at = self._now()

    def hold(self, base_index: int) -> None:
        """Forget the target and stay on ``base_index`` until a new target arrives."""
        self.target = None
        self._current = base_index

    @property
    def stale(self) -> bool:
        """Whether no pose arrived for ``WEBCAM_TIMEOUT_S``."""
        return self._now() - self.updated_at > WEBCAM_TIMEOUT_S

    def base_index(self, frame_index: int) -> int:
        if self.target is None:
            return self._current
        distance = np.linalg.norm(self.base_poses - self.target, axis=1)
        best = int(np.argmin(distance))
        if distance[best] + SWITCH_MARGIN_DEG < distance[self._current]:
            self._current = best
        return self._current


class PoseController:
    """The session's pose: one active mode (loop, still, script, webcam) and seamless returns to the loop."""

    MODES = ("loop", "still", "script", "webcam")

    def __init__(self, base_poses: np.ndarray, mode: str = "loop", *, now: Callable[[], float] = time.monotonic,
                 on_fallback: Callable[[], None] | None = None) -> None:
        self.base_count = int(base_poses.shape[0])
        self._now = now
        self._on_fallback = on_fallback
        self.loop = LoopPose(self.base_count)
        self.target = TargetPose(base_poses, now)
        self.still = StillPose(self.base_count)
        self.mode = "loop"
        self.fallbacks = 0
        self._last = (0, 0)  # (frame index, base index) last returned
        self.set_mode(mode)

    def set_mode(self, mode: str, *, still_index: int | None = None) -> None:
        """Switch driver. ``loop`` resumes from the base frame on screen."""
        if mode not in self.MODES:
            raise InputError(f"pose mode {mode!r} must be one of {self.MODES}")
        if mode == "still":
            self.still = StillPose(self.base_count, self._last[1] if still_index is None else still_index)
        if mode == "loop":
            self.loop.continue_from(self._last[1], self._last[0] + 1)
        if mode in ("script", "webcam"):
            self.target.hold(self._last[1])
        self.mode = mode

    def for_base_poses(self, base_poses: np.ndarray) -> PoseController:
        """The same driver over another twin's base loop (a session switching twins): the footage loop starts at
        the new loop's first frame, a still head holds its first frame, a scripted or webcam pose keeps its target
        (the nearest of the new twin's head poses is shown)."""
        other = PoseController(base_poses, now=self._now, on_fallback=self._on_fallback)
        if self.mode == "still":
            other.set_mode("still", still_index=0)
        elif self.mode in ("script", "webcam"):
            other.set_mode(self.mode)
            if self.target.target is not None:
                yaw, pitch, roll = (float(value) for value in self.target.target)
                other.target.update((yaw, pitch, roll), smooth=False)
        other.fallbacks = self.fallbacks
        return other

    def script(self, yaw: float, pitch: float, roll: float) -> None:
        """Hold the base frame nearest the given head pose (degrees)."""
        self.set_mode("script")
        self.target.update((yaw, pitch, roll), smooth=False)

    def webcam(self, pose: tuple[float, float, float]) -> None:
        """A pose measured on the operator's webcam; switches to webcam mode if not already in it."""
        if self.mode != "webcam":
            self.set_mode("webcam")
        self.target.update(pose)

    def base_index(self, frame_index: int) -> int:
        if self.mode == "webcam" and self.target.stale:
            self.fallbacks += 1
            self.set_mode("loop")
            if self._on_fallback is not None:
                self._on_fallback()
        driver: PoseDriver = self.loop if self.mode == "loop" else self.still if self.mode == "still" else self.target
        index = driver.base_index(frame_index)
        self._last = (frame_index, index)
        return index

    def describe(self) -> PoseStats:
        """For stats: the mode, the base frame on screen and how often the webcam was lost."""
        return {"mode": self.mode, "base_index": self._last[1], "webcam_fallbacks": self.fallbacks}
