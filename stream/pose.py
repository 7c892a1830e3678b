"""Pose drivers: which base frame (head pose, blinks, upper face) frame *n* is rendered over."""

from __future__ import annotations

from typing import Protocol

from twincast.errors import InputError


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

    def base_index(self, frame_index: int) -> int:
        if self.base_count == 1:
            return 0
        period = 2 * (self.base_count - 1)
        position = frame_index % period
        return position if position < self.base_count else period - position


class StillPose:
    """Always the same base frame: a still head (useful for tests and for presenters who sit still)."""

    def __init__(self, base_count: int, index: int = 0) -> None:
        if not 0 <= index < base_count:
            raise InputError(f"still pose index {index} is outside the base loop 0..{base_count - 1}")
        self.index = index

    def base_index(self, frame_index: int) -> int:
        return self.index


POSE_DRIVERS: dict[str, type[LoopPose] | type[StillPose]] = {"loop": LoopPose, "still": StillPose}


def make_pose_driver(name: str, base_count: int) -> PoseDriver:
    """Build a registered pose driver."""
    if name not in POSE_DRIVERS:
        raise InputError(f"unknown pose driver {name!r}; expected one of {sorted(POSE_DRIVERS)}")
    return POSE_DRIVERS[name](base_count)
