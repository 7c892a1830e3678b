"""The operator's event log: what happened, when, to which session — kept in a bounded ring and pushed live.

Every subscriber (a dashboard's WebSocket) gets a bounded queue; overflow rule: the oldest event is dropped
for that subscriber only, so a stalled browser never slows the live loop or other dashboards. Things that
happen in floods (late frames, dropped live audio, failed renders) are counted by a ``Tally``, which turns them
into at most one line per interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

HISTORY = 500
SUBSCRIBER_QUEUE = 200


@dataclass(frozen=True)
class Event:
    """One thing that happened."""

    at: float  # wall-clock seconds since the epoch
    kind: str  # e.g. "speech", "interrupt", "viewer", "output", "warning"
    message: str
    session: str | None = None
    level: str = "info"  # "info", "warning" (degraded, still working) or "error" (a request or output failed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


class EventLog:
    """A ring of recent events plus live subscribers."""

    def __init__(self, history: int = HISTORY) -> None:
        self._events: deque[Event] = deque(maxlen=history)
        self._subscribers: set[asyncio.Queue[Event]] = set()

    def emit(self, kind: str, message: str, *, session: str | None = None, level: str = "info") -> Event:
        """Record an event and hand it to every subscriber (never blocks)."""
        event = Event(time.time(), kind, message, session, level)
        self._events.append(event)
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
        return event

    def recent(self, limit: int = 100) -> list[Event]:
        """The newest ``limit`` events, oldest first."""
        return list(self._events)[-limit:]

    def subscribe(self) -> asyncio.Queue[Event]:
        """A queue that receives every future event."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        """Stop delivering to ``queue``."""
        self._subscribers.discard(queue)


class Tally:
    """Counts something that happens in bursts (late frames, dropped audio) and announces it at a bounded rate.

    The first occurrence is announced at once; later ones within ``every_s`` of an announcement are summed and
    announced together when that interval ends, so a flood becomes one line per interval and nothing is lost.
    Call ``add`` on the event loop.
    """

    def __init__(self, announce: Callable[[int], None], every_s: float = 1.0) -> None:
        self._announce = announce
        self._every_s = every_s
        self._pending = 0
        self._last_at = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def add(self, count: int = 1) -> None:
        """Count ``count`` more occurrences."""
        if count <= 0:
            return
        self._pending += count
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        wait_s = self._last_at + self._every_s - loop.time()
        if wait_s <= 0:
            self._flush()
        else:
            self._timer = loop.call_later(wait_s, self._flush)

    def _flush(self) -> None:
        self._timer = None
        if self._pending:
            count, self._pending = self._pending, 0
            self._last_at = asyncio.get_running_loop().time()
            self._announce(count)

    def close(self) -> None:
        """Stop: a pending announcement is dropped (what it counted stays in the stats)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
