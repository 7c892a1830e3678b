"""A WHEP client (aiortc): pull a twin's stream for a while and keep what arrived.

Used by the tests and benchmarks as a real remote peer, and by people who want to record or inspect a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from twincast.errors import InputError


@dataclass
class ReceivedMedia:
    """Decoded media as it arrived: RGB video frames and mono 16-bit audio, with arrival times."""

    video: list[np.ndarray] = field(default_factory=list)
    video_pts: list[int] = field(default_factory=list)
    video_arrival_s: list[float] = field(default_factory=list)
    audio_blocks: list[np.ndarray] = field(default_factory=list)
    audio_arrival_s: list[float] = field(default_factory=list)
    audio_rate_hz: int = 0
    answer_sdp: str = ""
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
    media = ReceivedMedia()
    first_video = media.first_video
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    tasks: list[asyncio.Task[None]] = []

    @peer.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        tasks.append(asyncio.ensure_future(drain(track, media, keep_video, reduce)))

    peer.addTransceiver("video", direction="recvonly")
    peer.addTransceiver("audio", direction="recvonly")
    await peer.setLocalDescription(await peer.createOffer())
    location = None
    async with aiohttp.ClientSession() as http:
        try:
            query = f"?session={session}" if session else ""
            async with http.post(f"{base_url}/whep{query}", data=peer.localDescription.sdp,
                                 headers={"Content-Type": "application/sdp"}) as response:
                body = await response.text()
                if response.status != 201:
                    raise InputError(f"WHEP offer refused: {response.status} {body}")
                location = response.headers["Location"]
            media.answer_sdp = body
            await peer.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            await asyncio.wait_for(first_video.wait(), timeout=10)
            if during is not None:
                await during()
            await asyncio.sleep(seconds)
        finally:
            if location is not None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.delete(f"{base_url}{location}"):
                        pass
            await peer.close()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return media
