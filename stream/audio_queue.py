"""Speech waiting to be spoken, cut into per-video-frame chunks at both sample rates."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avatar.audio import (
    FEATURE_RATE_HZ,
    FEATURE_SAMPLES_PER_FRAME,
    PLAYBACK_RATE_HZ,
    PLAYBACK_SAMPLES_PER_FRAME,
    VIDEO_FPS,
    resample,
    split_frames,
)
from twincast.errors import PayloadTooLargeError


@dataclass(frozen=True)
class AudioChunk:
    """The audio of one video frame: 1920 samples at 48 kHz for playback, 640 at 16 kHz for features."""

    playback: np.ndarray
    features: np.ndarray
    speech: bool


SILENCE = AudioChunk(
    playback=np.zeros(PLAYBACK_SAMPLES_PER_FRAME, np.float32),
    features=np.zeros(FEATURE_SAMPLES_PER_FRAME, np.float32),
    speech=False,
)


def prepare_chunks(samples: np.ndarray, sample_rate_hz: int) -> list[AudioChunk]:
    """Resample mono float speech to both rates and cut it into per-frame chunks (CPU work: run off the loop)."""
    playback = split_frames(resample(samples, sample_rate_hz, PLAYBACK_RATE_HZ), PLAYBACK_SAMPLES_PER_FRAME)
    features = split_frames(resample(samples, sample_rate_hz, FEATURE_RATE_HZ), FEATURE_SAMPLES_PER_FRAME)
    frames = min(playback.shape[0], features.shape[0])
    return [AudioChunk(playback[index], features[index], speech=True) for index in range(frames)]


class AudioQueue:
    """FIFO of per-frame chunks, bounded at ``max_frames``.

    Overflow rule: an utterance that does not fit is refused whole (``PayloadTooLargeError``); nothing
    already queued is dropped.
    """

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames
        self._chunks: deque[AudioChunk] = deque()

    def __len__(self) -> int:
        return len(self._chunks)

    def extend(self, chunks: list[AudioChunk]) -> int:
        """Queue an utterance's chunks (see ``prepare_chunks``); returns how many frames it fills.

        Raises:
            PayloadTooLargeError: the utterance does not fit; nothing is queued.
        """
        if len(self._chunks) + len(chunks) > self.max_frames:
            raise PayloadTooLargeError(
                f"speech of {len(chunks) / VIDEO_FPS:.1f} s does not fit: {len(self._chunks) / VIDEO_FPS:.1f} s is "
                f"queued and the limit is {self.max_frames / VIDEO_FPS:.0f} s; interrupt or wait"
            )
        self._chunks.extend(chunks)
        return len(chunks)

    def pop(self) -> AudioChunk:
        """The next frame's audio, or silence when nothing is queued."""
        return self._chunks.popleft() if self._chunks else SILENCE

    def clear(self) -> int:
        """Drop everything queued; returns how many frames were dropped."""
        dropped = len(self._chunks)
        self._chunks.clear()
        return dropped
