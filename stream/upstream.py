"""Upstream WebRTC peers: the operator's microphone (their own voice) and webcam (puppeteering the head), from
the dashboard, or both in one peer from a WHIP client such as OBS Studio (``POST /whip``).

Each is answered like a WHIP ingest: the client offers sendonly tracks, the server answers and consumes them.
An audio track (the microphone's, or a WHIP client's) feeds the session's audio as a live input; a video track's
head pose (FaceMesh + solvePnP, in a worker thread, dropping frames while one is being measured) drives the
session's pose. The FaceMesh graph and its thread (``PoseMeter``) belong to the channel and serve each webcam that
connects to it: a graph made and closed per connection left about 130 kB behind each time (measured by the
upstream churn test).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError

from avatar.pose import head_pose
from stream.audio_queue import StreamChunker
from stream.session import TwinSession
from stream.stats import UpstreamStats

log = logging.getLogger(__name__)


@dataclass
class Upstream:
    """One upstream peer and what it has delivered."""

    upstream_id: str
    kind: str  # "mic", "webcam" or "whip" (audio, video or both)
    session: TwinSession
    peer: RTCPeerConnection
    frames: int = 0
    measured: int = 0
    errors: int = 0
    started_at: float = field(default_factory=time.monotonic)
    consumers: list[asyncio.Task[None]] = field(default_factory=list)  # one per track read; each ends with it

    def describe(self) -> UpstreamStats:
        """For stats and the API."""
        return {"id": self.upstream_id, "kind": self.kind, "session": self.session.session_id,
                "state": self.peer.connectionState, "frames": self.frames, "measured": self.measured,
                "errors": self.errors}


async def consume_microphone(track: MediaStreamTrack, upstream: Upstream) -> None:
    """Feed the operator's voice into the session as live audio until the track ends."""
    chunker: StreamChunker | None = None
    upstream.session.audio_queue.clear()  # "my voice" replaces whatever script was queued
    while True:
        try:
            frame: Any = await track.recv()
        except MediaStreamError:
            return
        upstream.frames += 1
        channels = len(frame.layout.channels)
        samples = frame.to_ndarray().reshape(-1, channels).astype(np.float32).mean(axis=1)
        if frame.format.name.startswith("s16"):
            samples /= 32768.0
        if chunker is None or chunker.sample_rate_hz != frame.sample_rate:
            chunker = StreamChunker(frame.sample_rate, detect_speech=True)
        upstream.session.queue_stream(chunker.feed(samples), live=True)


class PoseMeter:
    """FaceMesh + head pose on webcam frames, on one dedicated thread (mediapipe graphs are not shareable across
    threads); the graph is loaded at the first frame and kept until ``close``."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twincast-webcam")
        self._landmarker: Any = None

    def _measure(self, frame: Any) -> tuple[float, float, float] | None:
        if self._landmarker is None:
            from avatar.landmarks import FaceLandmarker

            self._landmarker = FaceLandmarker(video=True)
        rgb = frame.to_ndarray(format="rgb24")
        points = self._landmarker.detect(rgb)
        if points is None:
            return None
        return head_pose(points, (rgb.shape[1], rgb.shape[0]))

    async def measure(self, frame: Any) -> tuple[float, float, float] | None:
        """The head pose of one frame (None when no face)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._measure, frame)

    def close(self) -> None:
        """Release the thread and the mediapipe graph."""
        def release() -> None:
            if self._landmarker is not None:
                self._landmarker.close()

        self._executor.submit(release)
        self._executor.shutdown(wait=False)


def _result_or_none(done: asyncio.Task[tuple[float, float, float] | None],
                    upstream: Upstream) -> tuple[float, float, float] | None:
    """A finished measurement, or None when it failed (logged; one bad frame never ends the stream)."""
    error = done.exception()
    if error is None:
        return done.result()
    upstream.errors += 1
    if upstream.errors in (1, 10, 100):  # rate-limited
        log.warning("webcam %s: head pose failed on a frame (%d so far): %s", upstream.upstream_id,
                    upstream.errors, error)
    return None


async def consume_webcam(track: MediaStreamTrack, upstream: Upstream, meter: PoseMeter) -> None:
    """Drive the session's head from the operator's webcam, measured by ``meter``, until the track ends.

    Frames arriving while one is being measured are dropped (the pose follows the newest frame); frames without
    a face are skipped, and if none comes for a second the pose controller falls back to the loop by itself.
    """
    pending: asyncio.Task[tuple[float, float, float] | None] | None = None
    try:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            upstream.frames += 1
            if pending is not None and not pending.done():
                continue
            if pending is not None:
                pose = _result_or_none(pending, upstream)
                if pose is not None:
                    upstream.session.pose.webcam(pose)
                    upstream.measured += 1
            pending = asyncio.ensure_future(meter.measure(frame))
    finally:
        if pending is not None:
            pending.cancel()
