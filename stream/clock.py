"""The session media clock: one monotonic origin, deadlines at origin + n × period, so waits never drift."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable


class MediaClock:
    """Frame deadlines on a monotonic clock.

    Args:
        fps: frames per second.
        now: the time source (seconds); injectable so tests can run time fast.
        sleep: the coroutine used to wait; injectable with ``now``.
        grid: when given, the origin is the first instant at or after now on the frame grid that starts at
            ``grid``, so every clock of one process at one fps ticks at the same instants (and their sessions'
            frames reach the render worker together, to be batched).
    """

    def __init__(self, fps: int, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, grid: float | None = None) -> None:
        self.fps = fps
        self.period_s = 1.0 / fps
        self.now = now
        self._sleep = sleep
        started = now()
        if grid is None:
            self.origin = started
        else:
            self.origin = grid + math.ceil((started - grid) / self.period_s - 1e-9) * self.period_s

    def deadline(self, frame_index: float) -> float:
        """Wall time (on ``now``'s clock) at which frame ``frame_index`` is due."""
        return self.origin + frame_index * self.period_s

    def frame_at(self, when: float | None = None) -> int:
        """Index of the frame whose period contains ``when`` (default: now)."""
        moment = self.now() if when is None else when
        return math.floor((moment - self.origin) / self.period_s + 1e-9)

    async def sleep_until(self, deadline: float) -> None:
        """Wait until ``deadline``; returns at once when it has passed."""
        delay = deadline - self.now()
        if delay > 0:
            await self._sleep(delay)
