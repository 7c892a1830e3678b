"""What a WebRTC publish of a session to another server (a WHIP endpoint, a Janus VideoRoom) does the same way
whatever the server: its state and counters, its task that publishes, watches and reconnects after
``outputs.Backoff``, its tracks, and the waits for the peer to connect and for the live connection to end.

A publish is one ``PeerPublish`` subclass: it says how one connection is made (``_publish_once``, which ends by
``_go_live``), how it is torn down (``_hang_up``), what it shows as its target (``describe``), and optionally what
else ends a connection (``_ended``). Every failure is a ``PublishFailure`` whose message says why; the task then
hangs up, waits the backoff and publishes again, until the output is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, NoReturn

import aiohttp
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from stream.outputs import Backoff, mask_key
from stream.peers import Viewer, close_peer
from stream.session import Spawn
from stream.stats import OutputStats

log = logging.getLogger(__name__)
CONNECT_TIMEOUT_S = 10.0  # the peer connection must be up this long after the answer
SILENT_S = 10.0  # a live publish that gets no RTCP receiver report for this long is taken for gone
WATCH_EVERY_S = 0.25
MAX_ERROR_CHARS = 200
TrackPair = Callable[[], tuple[MediaStreamTrack, MediaStreamTrack]]  # a fresh (video, audio) per connection


class PublishFailure(Exception):
    """One connection could not be made or has ended; the message says why (the output then reconnects)."""


class CountedTrack(MediaStreamTrack):
    """A track passed through unchanged, calling ``count`` for each frame; stopping it stops the source."""

    def __init__(self, source: MediaStreamTrack, count: Callable[[], None]) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._count = count

    async def recv(self) -> Any:
        frame = await self._source.recv()
        self._count()
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()


class PeerPublish:
    """The common part of a publish (see the module docstring); an ``outputs.Output`` once a subclass says how
    to connect.

    Args:
        output_id, session_id: its id and its session's.
        tracks: makes the (video, audio) tracks of one connection.
        new_peer: makes a peer connection (the channel's census counts it).
        on_state: called on the event loop after each state change.
        secret: a secret it sends (a token, a room secret), masked in any text it shows.
    """

    kind = ""
    remote = ""  # how messages name the other side, e.g. "the WHIP endpoint"

    def __init__(self, output_id: str, session_id: str, *, tracks: TrackPair,
                 new_peer: Callable[[], RTCPeerConnection], on_state: Callable[[Any], None] | None,
                 secret: str | None) -> None:
        self.output_id = output_id
        self.session_id = session_id
        self.state = "starting"
        self.error: str | None = None
        self.connects = 0
        self.reconnects = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.peer: RTCPeerConnection | None = None
        self._tracks = tracks
        self._new_peer = new_peer
        self._on_state = on_state
        self._secret = secret
        self._sending: list[MediaStreamTrack] = []
        self._backoff = Backoff()
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[Any] | None = None

    def target_shown(self) -> str:
        """The target as responses and logs show it (no secret)."""
        raise NotImplementedError

    def describe(self) -> OutputStats:
        """For the API and stats."""
        return {"id": self.output_id, "session": self.session_id, "kind": self.kind, "target": self.target_shown(),
                "state": self.state, "error": self.error, "connects": self.connects, "reconnects": self.reconnects,
                "video_frames": self.video_frames, "audio_frames": self.audio_frames, "dropped": 0, "repeated": 0}

    def start(self, spawn: Spawn) -> None:
        """Start publishing (a task made by ``spawn`` connects, watches and reconnects)."""
        self._http = self._new_http()
        self._task = spawn(self._run(), f"output-{self.output_id}-{self.kind}")

    def _new_http(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    async def stop(self) -> None:
        """Stop publishing: the task, then the connection (``_hang_up(stopping=True)``), then the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._hang_up(stopping=True)
        if self._http is not None:
            await self._http.close()
        self._set_state("stopped", self.error)

    def _set_state(self, state: str, error: str | None = None) -> None:
        self.state, self.error = state, error
        if self._on_state is not None:
            self._on_state(self)

    def _scrub(self, text: str) -> str:
        """The other side's or a library's message, with the secret (were it quoted) masked, cut short."""
        if self._secret:
            text = text.replace(self._secret, mask_key(self._secret))
        return text[:MAX_ERROR_CHARS]

    async def _run(self) -> None:
        """Publish, and after each failure hang up, wait the backoff and publish again, until cancelled."""
        while True:
            try:
                await self._publish_once()
            except PublishFailure as exc:
                reason = self._scrub(str(exc))
            except Exception as exc:  # a bug or an aiortc surprise: reconnect rather than hang "live" for ever
                log.exception("output %s: %s publish failed", self.output_id, self.kind)
                reason = self._scrub(f"{type(exc).__name__}: {exc}")
            await self._hang_up(stopping=False)
            wait_s = self._backoff.failed()
            self.reconnects += 1
            self._set_state("reconnecting", reason)
            log.warning("output %s to %s: %s; reconnecting in %.0f s", self.output_id, self.target_shown(), reason,
                        wait_s)
            await asyncio.sleep(wait_s)

    async def _publish_once(self) -> NoReturn:
        """Make one connection and watch it (``_go_live``) until it ends.

        Raises:
            PublishFailure: always, once the connection could not be made or has ended.
        """
        raise NotImplementedError

    async def _hang_up(self, *, stopping: bool) -> None:
        """End the current connection, if any (``stopping``: the output is being removed, not reconnecting)."""
        await self._close_peer()

    def _open_peer(self) -> tuple[RTCPeerConnection, MediaStreamTrack, MediaStreamTrack]:
        """A new peer and this connection's (video, audio) tracks, counted as they are sent."""
        peer = self.peer = self._new_peer()
        video, audio = self._tracks()
        self._sending = [CountedTrack(video, self._count_video), CountedTrack(audio, self._count_audio)]
        return peer, self._sending[0], self._sending[1]

    def _count_video(self) -> None:
        self.video_frames += 1

    def _count_audio(self) -> None:
        self.audio_frames += 1

    async def _close_peer(self) -> None:
        """Close the peer and stop the tracks of the current connection."""
        if self.peer is not None:
            await close_peer(self.peer)
            self.peer = None
        for track in self._sending:
            with contextlib.suppress(MediaStreamError):
                track.stop()
        self._sending = []

    def _ended(self, peer: RTCPeerConnection) -> str | None:
        """Why the current connection is over, or None while it lives."""
        if peer.connectionState in ("failed", "closed"):
            return f"the connection to {self.remote} {peer.connectionState}"
        return None

    async def _go_live(self, peer: RTCPeerConnection) -> NoReturn:
        """Wait until ``peer`` connects, count the connection and say ``live``, then watch it until it ends.

        Raises:
            PublishFailure: it did not connect within ``CONNECT_TIMEOUT_S``, it ended (``_ended``), or the other
                side sent no RTCP receiver report for ``SILENT_S`` (it is heard from as a viewer is).
        """
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while peer.connectionState != "connected":
            ended = self._ended(peer)
            if ended:
                raise PublishFailure(f"{ended} while connecting")
            if time.monotonic() > deadline:
                raise PublishFailure(f"no connection to {self.remote} within {CONNECT_TIMEOUT_S:.0f} s of its "
                                     "answer (ICE or DTLS did not complete)")
            await asyncio.sleep(WATCH_EVERY_S)
        self.connects += 1
        self._backoff.live()
        self._set_state("live")
        listener = Viewer(peer)
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            ended = self._ended(peer)
            if ended:
                raise PublishFailure(ended)
            silent_s = time.monotonic() - await listener.listen()
            if silent_s > SILENT_S:
                raise PublishFailure(f"{self.remote} sent no receiver report for {silent_s:.0f} s")
