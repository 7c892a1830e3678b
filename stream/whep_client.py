"""A WHEP client (aiortc): pull a twin's stream for a while and keep what arrived (``pull``), or hold a viewer
open and hang up when done (``WhepViewer``).

Used by the tests and benchmarks as a real remote peer, and by people who want to record or inspect a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from twincast.errors import InputError

NACK_RETRY_EVERY_S = 0.1  # libwebrtc's receiver asks again about once per round trip (100 ms before it knows the RTT)
NACK_RETRIES = 10  # and gives a packet up after 10 asks, as libwebrtc does


@dataclass
class ReceivedMedia:
    """Decoded media as it arrived: RGB video frames (the last ``keep_video`` of them; pts and arrival times of
    all) and mono 16-bit audio, with arrival times."""

    video: list[np.ndarray] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)
    video_arrival_s: list[float] = field(default_factory=list)
    audio_blocks: list[np.ndarray] = field(default_factory=list)
    audio_arrival_s: list[float] = field(default_factory=list)
    audio_rate_hz: int = 0
    answer_sdp: str = ""
    packets_asked_again: int = 0  # NACKs repeated for video packets still missing (``ask_again_for_lost_packets``)
    first_video: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def audio(self) -> np.ndarray:
        """All received audio as one mono int16 array."""
        return np.concatenate(self.audio_blocks) if self.audio_blocks else np.zeros(0, np.int16)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received."""
        return self.audio.shape[0] / self.audio_rate_hz if self.audio_rate_hz else 0.0


async def drain(track: MediaStreamTrack, media: ReceivedMedia, keep_video: int = 10_000,
                reduce: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
    """Receive ``track`` into ``media`` (frames with their arrival times) until it ends."""
    while True:
        try:
            frame: Any = await track.recv()
        except MediaStreamError:
            return
        now = time.monotonic()
        if track.kind == "video":
            media.video_arrival_s.append(now)
            media.video_pts.append(int(frame.pts or 0))
            rgb = frame.to_ndarray(format="rgb24")
            media.video.append(reduce(rgb) if reduce is not None else rgb)
            media.first_video.set()
            if len(media.video) > keep_video:
                media.video.pop(0)
        else:
            samples = frame.to_ndarray().reshape(-1, len(frame.layout.channels))
            media.audio_blocks.append(samples.mean(axis=1).astype(np.int16))
            media.audio_rate_hz = frame.sample_rate
            media.audio_arrival_s.append(now)


async def ask_again_for_lost_packets(peer: RTCPeerConnection, media: ReceivedMedia) -> None:
    """Until cancelled, NACK the video packets still missing every ``NACK_RETRY_EVERY_S``, each at most
    ``NACK_RETRIES`` times, as a browser's receiver does (counted in ``media.packets_asked_again``).

    aiortc's receiver NACKs its missing packets only when a new gap appears, so a lost NACK or a lost
    retransmission leaves its jitter buffer waiting on that packet until more packets go missing, or, on a link
    that turns clean, until 512 packets have piled up behind it (seconds of frozen picture; measured: gaps of
    0.8-1.9 s behind 30 % loss). Asking again is what makes an aiortc viewer recover like a browser.
    """
    asked: dict[int, int] = {}
    while True:
        await asyncio.sleep(NACK_RETRY_EVERY_S)
        for receiver in peer.getReceivers():
            if receiver.track is None or receiver.track.kind != "video":
                continue
            missing = _missing_packets(receiver)
            for number in list(asked):
                if number not in missing:
                    del asked[number]
            again = sorted(number for number in missing if asked.get(number, 0) < NACK_RETRIES)
            if not again:
                continue
            for number in again:
                asked[number] = asked.get(number, 0) + 1
            media.packets_asked_again += len(again)
            retransmitted = set(getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {}))
            for source in receiver.getSynchronizationSources():
                if source.source not in retransmitted:
                    await receiver._send_rtcp_nack(source.source, again)


def _missing_packets(receiver: RTCRtpReceiver) -> set[int]:
    """The sequence numbers aiortc's receiver knows are missing (its NACK generator's set; empty if this aiortc
    has none)."""
    generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
    if generator is None:
        return set()
    return set(generator.missing)


SdpRewrite = Callable[[str], Awaitable[str]]


class WhepViewer:
    """One WHEP viewer (aiortc): offers to receive video and audio, keeps what arrives in ``media``, hangs up.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8080``.
        session: the session to watch (the server's default when None).
        keep_video: keep at most this many most-recent video frames.
        reduce: applied to each decoded RGB frame before it is kept (e.g. a crop, so long runs fit in memory).
        rewrite_offer, rewrite_answer: change the SDP on its way, e.g. to put a network relay between the peers.
        configuration: the peer's ICE servers and transport policy (e.g. a TURN server from ``/api/ice-servers``,
            relay only); none by default.
    """

    def __init__(self, base_url: str, *, session: str | None = None, keep_video: int = 10_000,
                 reduce: Callable[[np.ndarray], np.ndarray] | None = None, rewrite_offer: SdpRewrite | None = None,
                 rewrite_answer: SdpRewrite | None = None, configuration: RTCConfiguration | None = None) -> None:
        self.base_url = base_url
        self.session = session
        self.media = ReceivedMedia()
        self.peer = RTCPeerConnection(configuration or RTCConfiguration(iceServers=[]))
        self.location: str | None = None  # the viewer's resource on the server, once answered
        self.connected = asyncio.Event()
        self._keep_video = keep_video
        self._reduce = reduce
        self._rewrite_offer = rewrite_offer
        self._rewrite_answer = rewrite_answer
        self._drains: list[asyncio.Task[None]] = []
        self._nacks: asyncio.Task[None] | None = None
        self.peer.on("track", self._on_track)
        self.peer.on("connectionstatechange", self._on_state)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._drains.append(asyncio.ensure_future(drain(track, self.media, self._keep_video, self._reduce)))

    def _on_state(self) -> None:
        if self.peer.connectionState == "connected":
            self.connected.set()

    async def connect(self, http: aiohttp.ClientSession) -> None:
        """Offer, POST to ``/whep``, apply the answer (ICE and DTLS then proceed on their own).

        Raises:
            InputError: the server refused the offer (its status and body are in the message).
        """
        self._nacks = asyncio.ensure_future(ask_again_for_lost_packets(self.peer, self.media))
        self.peer.addTransceiver("video", direction="recvonly")
        self.peer.addTransceiver("audio", direction="recvonly")
        await self.peer.setLocalDescription(await self.peer.createOffer())
        offer = self.peer.localDescription.sdp
        if self._rewrite_offer is not None:
            offer = await self._rewrite_offer(offer)
        query = f"?session={self.session}" if self.session else ""
        async with http.post(f"{self.base_url}/whep{query}", data=offer,
                             headers={"Content-Type": "application/sdp"}) as response:
            body = await response.text()
            if response.status != 201:
                raise InputError(f"WHEP offer refused: {response.status} {body}")
            self.location = response.headers["Location"]
        self.media.answer_sdp = body
        if self._rewrite_answer is not None:
            body = await self._rewrite_answer(body)
        await self.peer.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    async def hang_up(self, http: aiohttp.ClientSession, *, delete: bool = True) -> None:
        """Close the peer, first telling the server (``DELETE``) unless ``delete`` is False; stop receiving."""
        if delete and self.location is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{self.base_url}{self.location}"):
                    pass
        await self.peer.close()
        tasks = [*self._drains, *([self._nacks] if self._nacks is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pull(base_url: str, seconds: float, *, keep_video: int = 10_000, during: Any = None,
               session: str | None = None, reduce: Callable[[np.ndarray], np.ndarray] | None = None
               ) -> ReceivedMedia:
    """Connect to ``base_url``'s WHEP endpoint, receive for ``seconds``, hang up (DELETE), return the media.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8080``.
        seconds: how long to receive after the connection is up.
        keep_video: keep at most this many most-recent video frames.
        during: an optional coroutine function called (awaited) once the media is flowing.
        session: the session to watch (the server's default when None).
        reduce: applied to each decoded RGB frame before it is kept (e.g. a crop, so long runs fit in memory).
    """
    viewer = WhepViewer(base_url, session=session, keep_video=keep_video, reduce=reduce)
    async with aiohttp.ClientSession() as http:
        try:
            await viewer.connect(http)
            await asyncio.wait_for(viewer.media.first_video.wait(), timeout=10)
            if during is not None:
                await during()
            await asyncio.sleep(seconds)
        finally:
            await viewer.hang_up(http)
    return viewer.media
