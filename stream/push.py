"""The agent push protocol: a voice agent streams speech into a twin over a WebSocket (``GET /api/push``).

The full contract (rates, back-pressure, interrupt semantics and latency, errors) is ``docs/avatar-protocol.md``;
``CLIENT_MESSAGES``, ``SERVER_MESSAGES`` and ``SPEAKING_STATES`` below are the names it lists.

Messages from the agent:

- text ``{"type": "start", "sample_rate": 16000}`` — a new utterance; PCM that follows is 16-bit signed
  little-endian mono at ``sample_rate`` Hz (8000–96000, default 16000). Also re-arms the push after an
  interrupt.
- binary frames — PCM samples, any length (an even number of bytes). They are spoken as they arrive.
- text ``{"type": "end"}`` — end of utterance: the last partial frame is padded and queued.
- text ``{"type": "interrupt"}`` — barge-in: queued and playing speech stop within a frame or two.
- text ``{"type": "status"}`` — how much speech is queued, and the queue's limit (for back-pressure).

Replies from the server: ``{"type": "ready", …}`` on connect, ``{"type": "started", …}`` after ``start``,
``{"type": "queued", "seconds": …}`` after ``end``, ``{"type": "interrupted", "generation": …}``,
``{"type": "status", …}``, and ``{"type": "error", "error": "…"}`` for a bad message (the connection stays
open: one bad packet never ends the stream). After any interrupt, PCM is ignored until the next ``start``, so
packets still in flight from the cut-off utterance are not spoken.

Version 2 (``GET /api/push?version=2``) also sends ``{"type": "speaking", "state": …, "frame_index": …}`` when
the session's speech starts or stops playing and on every interrupt of the session (by anyone), with the frame's
time on the stream; version 1 (the default) never sends anything unasked, as before.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web

from stream.audio_queue import StreamChunker
from stream.session import TwinSession
from twincast.errors import InputError, PayloadTooLargeError

DEFAULT_RATE_HZ = 16_000
PROTOCOL_VERSIONS = (1, 2)
CLIENT_MESSAGES = ("start", "end", "interrupt", "status")
SERVER_MESSAGES = ("ready", "started", "queued", "interrupted", "status", "error", "speaking")
SPEAKING_STATES = ("started", "stopped", "interrupted")
OUTBOX_MESSAGES = 64  # replies wait for room (the reader pauses); a speaking event finding it full is dropped


def protocol_version(text: str | None) -> int:
    """The protocol version a client asked for with ``?version=`` (1 when it did not ask).

    Raises:
        InputError: not one of ``PROTOCOL_VERSIONS``.
    """
    if text is None:
        return 1
    if text not in {str(version) for version in PROTOCOL_VERSIONS}:
        raise InputError(f"push protocol version {text[:20]!r} is not one of {list(PROTOCOL_VERSIONS)}")
    return int(text)


class PushProtocol:
    """State of one push connection; ``on_text``/``on_binary`` return the replies to send, and (version 2)
    ``listen`` forwards the session's speaking events to an outbox."""

    def __init__(self, session: TwinSession, version: int = 1) -> None:
        self.session = session
        self.version = version
        self.rate_hz = DEFAULT_RATE_HZ
        self.chunker = StreamChunker(self.rate_hz)
        self.generation = session.generation
        self.utterance_frames = 0
        self.dropped_packets = 0
        self.dropped_events = 0
        self.errors = 0
        self._outbox: asyncio.Queue[dict[str, Any]] | None = None
        self._speech_from: int | None = None  # first frame of the speech playing now (between started and its end)

    @property
    def max_queued_s(self) -> float:
        """The most speech the session queues; a packet that would go beyond it is refused."""
        return self.session.audio_queue.max_frames / self.session.clock.fps

    def hello(self) -> dict[str, Any]:
        """The greeting sent when the socket opens."""
        return {"type": "ready", "session": self.session.session_id, "sample_rate": self.rate_hz,
                "format": "s16le mono", "protocol": self.version, "fps": self.session.clock.fps,
                "max_queued_s": round(self.max_queued_s, 3)}

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
        if kind == "status":
            return [self.status()]
        return self._error(f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_MESSAGES)}")

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

    def status(self) -> dict[str, Any]:
        """The queue as the agent needs it for back-pressure, and where the stream is."""
        fps = self.session.clock.fps
        return {"type": "status", "queued_s": round(len(self.session.audio_queue) / fps, 3),
                "max_queued_s": round(self.max_queued_s, 3), "frame_index": max(0, self.session.playout_index()),
                "speaking": self.session.speaking, "generation": self.session.generation,
                "accepting_pcm": self.generation == self.session.generation}

    def _queue(self, chunks: list[Any]) -> list[dict[str, Any]]:
        try:
            self.utterance_frames += self.session.queue_stream(chunks, live=False)
        except PayloadTooLargeError as exc:
            return self._error(str(exc))
        return []

    def _error(self, message: str) -> list[dict[str, Any]]:
        self.errors += 1
        return [{"type": "error", "error": message}]

    # --- version 2: speaking events --------------------------------------------------------------------------

    def listen(self, outbox: asyncio.Queue[dict[str, Any]]) -> None:
        """Forward the session's speaking events to ``outbox`` until ``close`` (version 2 only)."""
        if self.version < 2:
            return
        self._outbox = outbox
        self.session.on("playout", self._on_playout)
        self.session.on("interrupted", self._on_interrupted)

    def close(self) -> None:
        """Stop listening to the session."""
        if self._outbox is not None:
            self.session.remove_listener("playout", self._on_playout)
            self.session.remove_listener("interrupted", self._on_interrupted)
            self._outbox = None

    def _speaking(self, state: str, frame_index: int, **extra: Any) -> None:
        if self._outbox is None:
            return
        event = {"type": "speaking", "state": state, "frame_index": frame_index,
                 "pts_s": round(frame_index / self.session.clock.fps, 3), "generation": self.session.generation,
                 **extra}
        try:
            self._outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped_events += 1  # the client has not read its last OUTBOX_MESSAGES messages

    def _on_playout(self, playing: bool, frame_index: int) -> None:
        if playing:
            self._speech_from = frame_index
            self._speaking("started", frame_index)
        elif self._speech_from is not None:  # None: its end was already announced as an interrupt
            self._speaking("stopped", frame_index, frames=frame_index - self._speech_from)
            self._speech_from = None

    def _on_interrupted(self, first_silent_frame: int, dropped_frames: int) -> None:
        session = self.session
        silent_in_ms = 1000 * (session.playout_deadline(first_silent_frame) - session.clock.now())
        frames = first_silent_frame - self._speech_from if self._speech_from is not None else 0
        self._speaking("interrupted", first_silent_frame, frames=max(0, frames),
                       dropped_s=round(dropped_frames / session.clock.fps, 3), silent_in_ms=round(silent_in_ms, 1))
        self._speech_from = None


async def serve(socket: web.WebSocketResponse, protocol: PushProtocol) -> None:
    """Run one push connection to its end: answer each message in order and, in version 2, send the speaking
    events as they happen. One writer task owns the socket's sending side, so replies and events never
    interleave mid-message."""
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_MESSAGES)
    outbox.put_nowait(protocol.hello())  # first, before any event
    writer = asyncio.create_task(_send_all(socket, outbox), name=f"push-writer-{protocol.session.session_id}")
    protocol.listen(outbox)
    try:
        async for message in socket:
            if message.type == WSMsgType.TEXT:
                replies = protocol.on_text(message.data)
            elif message.type == WSMsgType.BINARY:
                replies = protocol.on_binary(message.data)
            else:
                break
            for reply in replies:
                await outbox.put(reply)
    finally:
        protocol.close()
        writer.cancel()


async def _send_all(socket: web.WebSocketResponse, outbox: asyncio.Queue[dict[str, Any]]) -> None:
    """Send what the outbox holds, in order, until cancelled. Once the peer is gone the rest is taken and
    discarded, so the reader never waits for room that would not come (it sees the close and ends)."""
    gone = False
    while True:
        message = await outbox.get()
        if gone or socket.closed:
            continue
        try:
            await socket.send_json(message)
        except ConnectionResetError:
            gone = True
