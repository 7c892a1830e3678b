"""A clock the test moves by hand: sleepers wake exactly when the test advances past their deadline."""

from __future__ import annotations

import asyncio

from stream.clock import MediaClock


class ManualTime:
    """``now``/``sleep`` pair for ``MediaClock``; ``advance_to`` releases every sleeper that is due."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.t + delay, future))
        await future

    def advance_to(self, t: float) -> None:
        self.t = t
        due = [(wake, f) for wake, f in self._sleepers if wake <= t + 1e-12]
        self._sleepers = [(wake, f) for wake, f in self._sleepers if wake > t + 1e-12]
        for _, future in due:
            if not future.done():
                future.set_result(None)

    def clock(self, fps: int = 25) -> MediaClock:
        return MediaClock(fps, now=self.now, sleep=self.sleep)
