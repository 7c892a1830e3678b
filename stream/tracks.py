"""WebRTC tracks that pace themselves on the session clock (aiortc does not pace by pts: ``recv`` must).

A session has one video track, relayed by aiortc's ``MediaRelay`` to every viewer and output (each relay
subscriber has its own queue, so a slow viewer never holds up another); every viewer and output gets its own
audio track, reading the session's shared audio. Video frame *n* and its audio blocks are released at the same
clock deadline, which is what keeps them in sync at the client.

The relay hands the same frame object to every subscriber, and aiortc's encoder forces a keyframe by marking the
frame it is given (``pict_type = I``): one viewer's keyframe request (PLI/FIR, after packet loss) would then force
keyframes on every viewer that encodes that frame after it (seen on the bad-network test: the lossless viewer got
a keyframe 10-80 ms after each of the lossy viewer's requests). So each viewer reads the relay through
``OwnFrames``, which hands it a copy of each frame.
"""

from __future__ import annotations

import math
from fractions import Fraction

from aiortc import MediaStreamTrack
from av import AudioFrame, VideoFrame

from avatar.audio import PLAYBACK_RATE_HZ
from stream.session import TwinSession

VIDEO_CLOCK_HZ = 90_000
AUDIO_BLOCKS_PER_FRAME = 2  # 20 ms WebRTC audio frames per 40 ms video frame
MAX_AUDIO_CATCH_UP_BLOCKS = 15  # up to 300 ms late, missed audio is sent at once; later than that, skipped


class TwinVideoTrack(MediaStreamTrack):
    """The session's video as yuv420p frames with pts = frame index × 3600 (90 kHz clock)."""

    kind = "video"

    def __init__(self, session: TwinSession) -> None:
        super().__init__()
        self._session = session
        self._next: int | None = None

    async def recv(self) -> VideoFrame:
        session = self._session
        if self._next is None:
            self._next = session.playout_index() + 1
        index = self._next
        await session.clock.sleep_until(session.playout_deadline(index))
        now_index = session.playout_index()
        if now_index > index:  # the loop or the peer stalled: skip ahead instead of letting latency grow
            index = now_index
        frame = VideoFrame.from_ndarray(session.video_i420(index), format="yuv420p")
        frame.pts = index * (VIDEO_CLOCK_HZ // session.clock.fps)
        frame.time_base = Fraction(1, VIDEO_CLOCK_HZ)
        self._next = index + 1
        return frame


class OwnFrames(MediaStreamTrack):
    """One consumer's side of a relayed video track: the same frames, each one a copy of its own (see the
    module docstring). Stopping it stops the relay subscription."""

    kind = "video"

    def __init__(self, subscription: MediaStreamTrack) -> None:
        super().__init__()
        self._subscription = subscription

    async def recv(self) -> VideoFrame:
        shared = await self._subscription.recv()
        assert isinstance(shared, VideoFrame)
        frame = VideoFrame.from_ndarray(shared.to_ndarray(format="yuv420p"), format="yuv420p")
        frame.pts = shared.pts
        frame.time_base = shared.time_base
        return frame

    def stop(self) -> None:
        super().stop()
        self._subscription.stop()


class TwinAudioTrack(MediaStreamTrack):
    """The session's audio as 20 ms, 48 kHz mono s16 frames, on the same clock as the video.

    When the loop is late by a few blocks (a busy machine) the missed blocks are sent at once, in order, so the
    sound stays whole; only a stall of more than ``MAX_AUDIO_CATCH_UP_BLOCKS`` skips ahead, so latency stays
    bounded. (Video skips instead: a repeated or skipped picture is not heard.)
    """

    kind = "audio"

    def __init__(self, session: TwinSession) -> None:
        super().__init__()
        self._session = session
        self._next: int | None = None

    async def recv(self) -> AudioFrame:
        session = self._session
        if self._next is None:
            self._next = (session.playout_index() + 1) * AUDIO_BLOCKS_PER_FRAME
        block = self._next
        await session.clock.sleep_until(session.playout_deadline(block / AUDIO_BLOCKS_PER_FRAME))
        block_s = session.clock.period_s / AUDIO_BLOCKS_PER_FRAME
        now_block = math.floor((session.clock.now() - session.playout_deadline(0)) / block_s)
        if now_block - block > MAX_AUDIO_CATCH_UP_BLOCKS:
            block = now_block
        samples = session.audio_block(block, AUDIO_BLOCKS_PER_FRAME)
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = PLAYBACK_RATE_HZ
        frame.pts = block * samples.shape[0]
        frame.time_base = Fraction(1, PLAYBACK_RATE_HZ)
        self._next = block + 1
        return frame
