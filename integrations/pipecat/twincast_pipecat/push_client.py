"""A client of twincast's avatar protocol, version 2 (``docs/avatar-protocol.md`` in the twincast repository): an
agent's speech goes to a twin over its push socket, and the twin's speaking events come back.

Framework-free (asyncio and aiohttp): ``TwincastVideoService`` drives it from a pipecat pipeline; any other agent
stack can use it as it is.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from loguru import logger

PROTOCOL_VERSION = 2
MAX_PACKET_BYTES = 32_000  # one PCM message: far under the server's 1 MiB message limit, 1 s at 16 kHz
MAX_WAIT_S = 1.0  # back-pressure: look at the queue again at least this often while waiting for room
LEAD_MARGIN_S = 1.0  # the default lead stays this far under the server's queue limit


class PushError(Exception):
    """The twin refused what was pushed, or the push socket is not usable; the message says which."""


@dataclass(frozen=True)
class Ready:
    """The server's greeting: the session, its frame rate and how much speech it queues."""

    session: str
    fps: int
    max_queued_s: float
    protocol: int


@dataclass(frozen=True)
class Status:
    """The session's speech queue and stream position (the reply to a ``status`` request)."""

    queued_s: float
    max_queued_s: float
    frame_index: int
    speaking: bool
    generation: int
    accepting_pcm: bool


@dataclass(frozen=True)
class SpeakingEvent:
    """Speech started or stopped playing at the twin's egress, or was interrupted.

    ``frame_index`` is the first frame of speech (``started``) or the first silent frame after it (``stopped``,
    ``interrupted``) on the session's stream, whose time there is ``pts_s``; ``frames`` is how many frames of
    speech played before it ended; ``received_at_s`` is this machine's ``time.monotonic()`` when it arrived.
    """

    state: str
    frame_index: int
    pts_s: float
    generation: int
    frames: int | None
    dropped_s: float | None
    silent_in_ms: float | None
    received_at_s: float

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> SpeakingEvent:
        """Read a ``speaking`` message."""
        return cls(state=message["state"], frame_index=message["frame_index"], pts_s=message["pts_s"],
                   generation=message["generation"], frames=message.get("frames"),
                   dropped_s=message.get("dropped_s"), silent_in_ms=message.get("silent_in_ms"),
                   received_at_s=time.monotonic())


SpeakingHandler = Callable[[SpeakingEvent], Awaitable[None]]


class AvatarPushClient:
    """One agent's connection to a twin: utterances of 16-bit mono PCM in, speaking events out.

    Back-pressure: the server queues at most ``max_queued_s`` of speech and refuses audio beyond it, so the
    client keeps its lead (speech sent, not yet played) under ``max_lead_s``: it counts what it sent since the
    server last said how much was queued, and before a packet that would go past the lead it asks again
    (``status``) and waits while the twin plays the excess, one second per second. Nothing is dropped and nothing
    is sent that the server would refuse; an agent producing speech faster than real time simply runs that far
    ahead and then at the twin's pace.

    Args:
        url: the twincast server, e.g. ``http://127.0.0.1:8080``.
        token: its operator token (``TWINCAST_OPERATOR_TOKEN``), if it has one.
        session: the twincast session to drive (the server's default when None).
        max_lead_s: the most speech to have queued at the twin; at most its queue limit, which is also the
            default (less ``LEAD_MARGIN_S``).
        on_speaking: awaited with each speaking event, in order (keep it short: replies wait behind it).
    """

    def __init__(self, url: str, *, token: str | None = None, session: str | None = None,
                 max_lead_s: float | None = None, on_speaking: SpeakingHandler | None = None) -> None:
        if max_lead_s is not None and max_lead_s < 1.0:
            raise ValueError(f"max_lead_s {max_lead_s} must be at least 1 s (a packet is up to 1 s)")
        query = {"version": str(PROTOCOL_VERSION), **({"session": session} if session else {})}
        self.url = f"{url.rstrip('/')}/api/push?{urlencode(query)}"
        self.max_lead_s = max_lead_s
        self.ready: Ready | None = None
        self.pushed_s = 0.0  # seconds of PCM sent in all
        self.waits = 0  # times back-pressure held a packet back
        self.refusals: list[str] = []  # the server's error messages, in order
        self.utterances_s: list[float] = []  # each utterance's length as the server queued it (``queued``)
        self.peak_queued_s = 0.0  # the most speech a status reply said was queued
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._on_speaking = on_speaking
        self._socket: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._statuses: deque[asyncio.Future[Status]] = deque()  # requests in flight, answered in order
        self._rate_hz: int | None = None  # the open utterance's sample rate; None between utterances
        self._queued_s = 0.0  # what the last status said was queued ...
        self._unconfirmed_s = 0.0  # ... and what was sent after it was asked for
        self._reported = 0  # refusals already raised

    @property
    def rate_hz(self) -> int | None:
        """The sample rate of the utterance being pushed, or None between utterances."""
        return self._rate_hz

    async def connect(self, http: aiohttp.ClientSession) -> Ready:
        """Open the push socket and read the greeting.

        Raises:
            PushError: the server refused the connection (its status and reason in the message), or its
                greeting is not a version-2 ``ready``.
        """
        try:
            self._socket = await http.ws_connect(self.url, headers=self._headers, compress=0, heartbeat=20)
        except aiohttp.WSServerHandshakeError as exc:
            raise PushError(f"the twin's push socket refused the connection: {exc.status} {exc.message}") from exc
        hello = await self._socket.receive_json(timeout=10)
        if hello.get("type") != "ready" or hello.get("protocol") != PROTOCOL_VERSION:
            raise PushError(f"expected a version-{PROTOCOL_VERSION} ready message, got {hello!r}")
        self.ready = Ready(session=hello["session"], fps=hello["fps"], max_queued_s=hello["max_queued_s"],
                           protocol=hello["protocol"])
        limit = self.ready.max_queued_s - LEAD_MARGIN_S
        self.max_lead_s = limit if self.max_lead_s is None else min(self.max_lead_s, limit)
        self._reader = asyncio.create_task(self._read(self._socket), name="twincast-push-reader")
        return self.ready

    async def close(self) -> None:
        """Close the socket (what is queued at the twin still plays)."""
        if self._socket is not None:
            await self._socket.close()
        if self._reader is not None:
            await self._reader
        self._socket = self._reader = None

    async def start(self, sample_rate_hz: int) -> None:
        """Begin an utterance of PCM at ``sample_rate_hz``."""
        await self._send_json({"type": "start", "sample_rate": sample_rate_hz})
        self._rate_hz = sample_rate_hz

    async def send_pcm(self, pcm: bytes) -> None:
        """Push 16-bit mono PCM of the open utterance, waiting for room at the twin (see the class).

        Raises:
            PushError: no utterance is open, or the server refused audio sent earlier.
        """
        if self._rate_hz is None:
            raise PushError("send_pcm outside an utterance: call start(sample_rate_hz) first")
        if len(pcm) % 2:
            raise PushError(f"PCM of {len(pcm)} bytes is not whole 16-bit samples")
        socket = self._open_socket()
        for offset in range(0, len(pcm), MAX_PACKET_BYTES):
            packet = pcm[offset : offset + MAX_PACKET_BYTES]
            seconds = len(packet) / 2 / self._rate_hz
            await self._wait_for_room(seconds)
            self._raise_refusals()
            await socket.send_bytes(packet)
            self._unconfirmed_s += seconds
            self.pushed_s += seconds

    async def end(self) -> None:
        """End the utterance (its last partial frame is padded and queued)."""
        if self._rate_hz is not None:
            await self._send_json({"type": "end"})
            self._rate_hz = None
        self._raise_refusals()

    async def interrupt(self) -> None:
        """Stop the twin's speech now: what is queued is dropped and the next frame to play is silent."""
        await self._send_json({"type": "interrupt"})
        self._rate_hz = None
        self._queued_s = self._unconfirmed_s = 0.0

    async def status(self) -> Status:
        """Ask the server how much speech is queued (answered after everything sent before it)."""
        reply: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        sent_before = self._unconfirmed_s
        self._statuses.append(reply)  # before sending: the reply may be read while the send is still waiting
        try:
            await self._send_json({"type": "status"})
        except PushError:
            self._statuses.remove(reply)
            raise
        status = await reply
        self._queued_s = status.queued_s
        self.peak_queued_s = max(self.peak_queued_s, status.queued_s)
        self._unconfirmed_s = max(0.0, self._unconfirmed_s - sent_before)
        return status

    async def _wait_for_room(self, seconds: float) -> None:
        assert self.max_lead_s is not None  # set by connect()
        while self._queued_s + self._unconfirmed_s + seconds > self.max_lead_s:
            status = await self.status()
            over_s = status.queued_s + seconds - self.max_lead_s
            if over_s > 0:
                self.waits += 1
                await asyncio.sleep(min(over_s, MAX_WAIT_S))  # the twin plays one second of speech per second

    def _open_socket(self) -> aiohttp.ClientWebSocketResponse:
        if self._socket is None or self._socket.closed:
            raise PushError("the push socket is not open (connect() first, or the server closed it)")
        return self._socket

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self._open_socket().send_str(json.dumps(message))

    def _raise_refusals(self) -> None:
        if len(self.refusals) > self._reported:
            new = self.refusals[self._reported :]
            self._reported = len(self.refusals)
            raise PushError(f"the twin refused pushed audio: {'; '.join(new)}")

    async def _read(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        """Dispatch what the server sends until the socket closes: status replies to their requests, speaking
        events to ``on_speaking``, errors to ``refusals``."""
        try:
            async for message in socket:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                event = self._dispatch(json.loads(message.data))
                if event is not None and self._on_speaking is not None:
                    await self._on_speaking(event)
        finally:  # however reading ended, nobody waits for a reply that will not come
            closed = PushError(f"the push socket closed (code {socket.close_code})")
            while self._statuses:
                request = self._statuses.popleft()
                if not request.done():
                    request.set_exception(closed)

    def _dispatch(self, body: dict[str, Any]) -> SpeakingEvent | None:
        """Take in one server message; a speaking event is returned for ``on_speaking``."""
        kind = body.get("type")
        if kind == "status":
            request = self._statuses.popleft()
            if not request.done():  # a request whose caller was cancelled still gets its reply here
                request.set_result(Status(queued_s=body["queued_s"], max_queued_s=body["max_queued_s"],
                                          frame_index=body["frame_index"], speaking=body["speaking"],
                                          generation=body["generation"], accepting_pcm=body["accepting_pcm"]))
        elif kind == "queued":
            self.utterances_s.append(float(body["seconds"]))
        elif kind == "speaking":
            return SpeakingEvent.from_message(body)
        elif kind == "error":
            logger.warning(f"twincast push: {body.get('error')}")
            self.refusals.append(str(body.get("error")))
        return None
