"""The operator's event log: what happened, when, to which session — kept in a bounded ring and pushed live.

Every subscriber (a dashboard's WebSocket) gets a bounded queue; overflow rule: the oldest event is dropped
for that subscriber only, so a stalled browser never slows the live loop or other dashboards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
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
    level: str = "info"  # "info" or "warning"

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
