"""Receiving a twin over WHEP with aiortc: its pictures and its sound, handed over in the order the twin sent them.

Sync: the server sends frame *n*'s picture and its two 20 ms audio blocks at the same clock deadline. aiortc does
not synchronise tracks by RTCP sender reports, and its receiver holds audio longer than video: its audio jitter
buffer hands a packet on when the fourth packet after it arrives (80 ms), its video path a frame when the next
frame's first packet arrives (40 ms); decoding adds a variable delay, more on a busy CPU. So each track's
timestamps are mapped to the time the twin sent them (``SendClock``), sound is handed over as it comes (audio is
the master clock, as in the twin), and each picture waits until the sound sent before it has been handed over.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any
from urllib.parse import urlencode

import aiohttp
import av
import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

AUDIO_BUFFER_S = 0.080  # aiortc's audio jitter buffer: a packet waits for the 4th 20 ms packet after it
VIDEO_BUFFER_S = 0.040  # aiortc's video path: a frame waits for the next frame's first packet (one 40 ms period)
MAX_HELD_PICTURES = 10  # pictures waiting for their sound; beyond this (sound stalled) the oldest goes anyway


class SendClock:
    """One track's timestamps mapped to the time the twin sent them, on this machine's monotonic clock.

    A packet arrives ``arrival − pts`` after its track's start plus its delay on the way; the smallest value seen
    is the start plus the shortest delay, which is the receiver's jitter buffer (``buffer_s``) and next to nothing
    on a network at rest. So ``sent_at = pts + min(arrival − pts) − buffer_s``, and it is the same clock for both
    tracks, whatever the variable decoding delays.
    """

    def __init__(self, buffer_s: float) -> None:
        self.buffer_s = buffer_s
        self.offset_s = math.inf

    def sent_at(self, pts_s: float, arrival_s: float) -> float:
        """When the packet with ``pts_s`` (seconds on its track) left the twin; learns from its arrival."""
        self.offset_s = min(self.offset_s, arrival_s - pts_s - self.buffer_s)
        return pts_s + self.offset_s


OnPicture = Callable[[np.ndarray, int], Awaitable[None]]  # an RGB picture, (height, width, 3) uint8; its pts_ns
OnSound = Callable[[bytes, int, int], Awaitable[None]]  # 16-bit mono PCM, its sample rate; its pts_ns


class WhepError(Exception):
    """The twin's WHEP endpoint refused the offer, or the stream did not start."""


class TwinReceiver:
    """One WHEP viewer of a twin (aiortc) that hands each picture and each piece of sound to a callback, each
    picture right after the sound the twin sent before it (see the module).

    Pictures come as RGB arrays at the twin's frame rate; sound as 16-bit mono PCM resampled to
    ``sample_rate_hz``, in the order the twin plays it (silence included: the stream never pauses; sound lost on
    the way is replaced by silence of its length). Each comes with its ``pts_ns``: when the twin sent it, in
    nanoseconds since this receiver connected (so a picture's and its sound's are equal).

    Args:
        url: the twincast server, e.g. ``http://127.0.0.1:8080``.
        session: the twincast session to watch (the server's default when None).
        sample_rate_hz: the rate the sound is handed over at.
        on_picture, on_sound: awaited with each picture / each piece of sound, in order.
        spawn: starts the two receiving tasks (pipecat's ``create_task``, so its task manager owns them).
    """

    def __init__(self, url: str, *, session: str | None, sample_rate_hz: int, on_picture: OnPicture,
                 on_sound: OnSound,
                 spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[Any]]) -> None:
        query = f"?{urlencode({'session': session})}" if session else ""
        self.url = url.rstrip("/")
        self.offer_url = f"{self.url}/whep{query}"
        self.sample_rate_hz = sample_rate_hz
        self.pictures = 0
        self.sound_s = 0.0
        self.gaps_s = 0.0  # silence put in for sound that never came
        self.first_picture = asyncio.Event()
        self._picture_handed = asyncio.Condition()
        self._held: deque[tuple[float, np.ndarray]] = deque()  # (sent at, picture), bounded by MAX_HELD_PICTURES
        self._sound_until_s = -math.inf  # when the twin sent the end of the sound handed over so far
        self._handing = asyncio.Lock()
        self._origin_s = time.monotonic()  # pts 0
        self._on_picture = on_picture
        self._on_sound = on_sound
        self._spawn = spawn
        self._peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._location: str | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._peer.on("track", self._on_track)

    async def connect(self, http: aiohttp.ClientSession, timeout_s: float = 10.0) -> None:
        """Offer to receive video and audio, apply the answer, and wait for the first picture.

        Raises:
            WhepError: the offer was refused (status and body in the message), or no picture came in time.
        """
        self._peer.addTransceiver("video", direction="recvonly")
        self._peer.addTransceiver("audio", direction="recvonly")
        await self._peer.setLocalDescription(await self._peer.createOffer())
        async with http.post(self.offer_url, data=self._peer.localDescription.sdp,
                             headers={"Content-Type": "application/sdp"}) as response:
            answer = await response.text()
            if response.status != 201:
                raise WhepError(f"the twin's WHEP endpoint refused the offer: {response.status} {answer[:300]}")
            self._location = response.headers["Location"]
        await self._peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        try:
            await asyncio.wait_for(self.first_picture.wait(), timeout=timeout_s)
        except TimeoutError as exc:
            raise WhepError(f"no picture from {self.offer_url} within {timeout_s:g} s") from exc

    async def wait_for_pictures(self, count: int, timeout_s: float = 10.0) -> None:
        """Wait until ``count`` more pictures have been handed over (the stream has moved on that far).

        Raises:
            WhepError: they did not come within ``timeout_s`` (the stream stalled).
        """
        target = self.pictures + count
        async with self._picture_handed:
            try:
                await asyncio.wait_for(self._picture_handed.wait_for(lambda: self.pictures >= target), timeout_s)
            except TimeoutError as exc:
                raise WhepError(f"the twin's stream stalled: {self.pictures - target + count} of {count} "
                                f"pictures in {timeout_s:g} s") from exc

    async def close(self, http: aiohttp.ClientSession) -> None:
        """Hang up (``DELETE`` the viewer, close the peer) and stop the receiving tasks."""
        if self._location is not None:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.delete(f"{self.url}{self._location}"):
                    pass
            self._location = None
        await self._peer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_track(self, track: MediaStreamTrack) -> None:
        pump = self._pump_video(track) if track.kind == "video" else self._pump_audio(track)
        self._tasks.append(self._spawn(pump, f"twincast-whep-{track.kind}"))

    async def _pump_video(self, track: MediaStreamTrack) -> None:
        clock = SendClock(VIDEO_BUFFER_S)
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.VideoFrame) or frame.pts is None or frame.time_base is None:
                continue  # aiortc's receiver hands decoded, stamped frames; anything else is not a picture
            sent_s = clock.sent_at(float(frame.pts * frame.time_base), time.monotonic())
            self._held.append((sent_s, frame.to_ndarray(format="rgb24")))
            await self._hand_due_pictures()

    async def _pump_audio(self, track: MediaStreamTrack) -> None:
        clock = SendClock(AUDIO_BUFFER_S)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=self.sample_rate_hz)
        next_pts: int | None = None  # where the next packet should start, in the track's time base
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame) or frame.pts is None or frame.time_base is None:
                continue
            sent_s = clock.sent_at(float(frame.pts * frame.time_base), time.monotonic())
            if next_pts is not None and frame.pts > next_pts:
                # a packet lost, or skipped by a server that fell behind: its time is silence, so the sound
                # stays on the twin's clock (and beside its pictures)
                gap_s = float((frame.pts - next_pts) * frame.time_base)
                self.gaps_s += gap_s
                await self._hand_sound(bytes(2 * round(gap_s * self.sample_rate_hz)), sent_s - gap_s)
            next_pts = frame.pts + frame.samples
            for out in resampler.resample(frame):
                await self._hand_sound(out.to_ndarray().tobytes(), sent_s)

    async def _hand_sound(self, pcm: bytes, sent_s: float) -> None:
        """Hand over sound the twin sent from ``sent_s`` on, then the pictures sent before its end."""
        seconds = len(pcm) / 2 / self.sample_rate_hz
        self.sound_s += seconds
        await self._on_sound(pcm, self.sample_rate_hz, self._pts_ns(sent_s))
        self._sound_until_s = max(self._sound_until_s, sent_s + seconds)
        await self._hand_due_pictures()

    def _pts_ns(self, sent_s: float) -> int:
        return max(0, round((sent_s - self._origin_s) * 1e9))

    async def _hand_due_pictures(self) -> None:
        """Hand over, oldest first, the held pictures whose sound has been handed over (or that waited too long)."""
        async with self._handing:  # one at a time: the two pumps never reorder pictures
            while self._held and (self._held[0][0] <= self._sound_until_s or len(self._held) > MAX_HELD_PICTURES):
                sent_s, rgb = self._held.popleft()
                await self._on_picture(rgb, self._pts_ns(sent_s))
                self.first_picture.set()
                async with self._picture_handed:
                    self.pictures += 1
                    self._picture_handed.notify_all()
