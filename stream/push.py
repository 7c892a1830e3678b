"""The agent push protocol: a voice agent streams speech into a twin over a WebSocket (``GET /api/push``).

Messages from the agent:

- text ``{"type": "start", "sample_rate": 16000}`` — a new utterance; PCM that follows is 16-bit signed
  little-endian mono at ``sample_rate`` Hz (8000–96000, default 16000). Also re-arms the push after an
  interrupt.
- binary frames — PCM samples, any length (an even number of bytes). They are spoken as they arrive.
- text ``{"type": "end"}`` — end of utterance: the last partial frame is padded and queued.
- text ``{"type": "interrupt"}`` — barge-in: queued and playing speech stop within a frame or two.

Replies from the server: ``{"type": "ready", …}`` on connect, ``{"type": "queued", "seconds": …}`` after
``end``, ``{"type": "interrupted", "generation": …}``, and ``{"type": "error", "error": "…"}`` for a bad
message (the connection stays open: one bad packet never ends the stream). After any interrupt, PCM is ignored
until the next ``start``, so packets still in flight from the cut-off utterance are not spoken.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from stream.audio_queue import StreamChunker
from stream.session import TwinSession
from twincast.errors import PayloadTooLargeError

DEFAULT_RATE_HZ = 16_000


class PushProtocol:
    """State of one push connection; ``on_text``/``on_binary`` return the replies to send."""

    def __init__(self, session: TwinSession) -> None:
        self.session = session
        self.rate_hz = DEFAULT_RATE_HZ
        self.chunker = StreamChunker(self.rate_hz)
        self.generation = session.generation
        self.utterance_frames = 0
        self.dropped_packets = 0
        self.errors = 0

    def hello(self) -> dict[str, Any]:
        """The greeting sent when the socket opens."""
        return {"type": "ready", "session": self.session.session_id, "sample_rate": self.rate_hz,
                "format": "s16le mono"}

    def on_text(self, message: str) -> list[dict[str, Any]]:
        """Handle a control message."""
        try:
            body = json.loads(message)
        except json.JSONDecodeError as exc:
            return self._error(f"control message is not JSON: {exc.msg}")
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return self._error('control message must be a JSON object with a "type"')
        kind = body["type"]
        if kind == "start":
            rate = body.get("sample_rate", DEFAULT_RATE_HZ)
            if not isinstance(rate, int) or not 8000 <= rate <= 96000:
                return self._error(f"sample_rate {rate!r} must be an integer in 8000..96000")
            self.rate_hz = rate
            self.chunker = StreamChunker(rate)
            self.generation = self.session.generation
            self.utterance_frames = 0
            return [{"type": "started", "sample_rate": rate}]
        if kind == "end":
            tail = self.chunker.flush()
            queued = self._queue(tail) if self.generation == self.session.generation else []
            seconds = self.utterance_frames / self.session.clock.fps
            self.utterance_frames = 0
            self.generation = self.session.generation
            return queued or [{"type": "queued", "seconds": round(seconds, 3)}]
        if kind == "interrupt":
            result = self.session.interrupt()
            self.chunker = StreamChunker(self.rate_hz)
            self.utterance_frames = 0
            return [{"type": "interrupted", **result}]
        return self._error(f"unknown message type {kind!r}; expected start, end or interrupt")

    def on_binary(self, payload: bytes) -> list[dict[str, Any]]:
        """Handle a PCM packet."""
        if self.generation != self.session.generation:
            self.dropped_packets += 1  # from an interrupted utterance; ignored until the next start
            self.utterance_frames = 0
            return []
        if len(payload) % 2:
            return self._error(f"PCM packet of {len(payload)} bytes is not whole 16-bit samples; dropped")
        samples = np.frombuffer(payload, dtype="<i2").astype(np.float32) / 32768.0
        return self._queue(self.chunker.feed(samples))

    def _queue(self, chunks: list[Any]) -> list[dict[str, Any]]:
        try:
            self.utterance_frames += self.session.queue_stream(chunks, live=False)
        except PayloadTooLargeError as exc:
            return self._error(str(exc))
        return []

    def _error(self, message: str) -> list[dict[str, Any]]:
        self.errors += 1
        return [{"type": "error", "error": message}]
