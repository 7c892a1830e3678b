"""Speech waiting to be spoken, cut into per-video-frame chunks at both sample rates.

Whole utterances (text to speech, uploaded files) are resampled in one go by ``prepare_chunks``; live streams
(an agent's PCM push, the operator's microphone) go through a ``StreamChunker``, which keeps its filter state
between packets so packet boundaries leave no clicks.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
from scipy.signal import firwin, lfilter

from avatar.audio import (
    FEATURE_RATE_HZ,
    FEATURE_SAMPLES_PER_FRAME,
    PLAYBACK_RATE_HZ,
    PLAYBACK_SAMPLES_PER_FRAME,
    VIDEO_FPS,
    resample,
    split_frames,
)
from twincast.errors import InputError, PayloadTooLargeError

SPEECH_LEVEL_DBFS = -45.0  # a live chunk louder than this counts as speech


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


class StreamChunker:
    """Live mono PCM at any rate in, per-frame ``AudioChunk``s out.

    PyAV's stateful resampler brings the stream to 48 kHz; a streaming low-pass FIR and 3:1 decimation give
    the 16 kHz features from the same samples, so playback and features stay aligned.
    """

    def __init__(self, sample_rate_hz: int, *, detect_speech: bool = False) -> None:
        if not 8000 <= sample_rate_hz <= 96000:
            raise InputError(f"sample_rate {sample_rate_hz} Hz is outside 8000..96000")
        self.sample_rate_hz = sample_rate_hz
        self.detect_speech = detect_speech
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=PLAYBACK_RATE_HZ)
        self._pts = 0
        self._taps = firwin(63, 7200.0, fs=PLAYBACK_RATE_HZ).astype(np.float64)
        self._state = np.zeros(self._taps.size - 1)
        self._phase = 0
        self._playback = np.zeros(0, np.float32)
        self._features = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> list[AudioChunk]:
        """Add mono float samples in [-1, 1]; returns the whole frames now complete."""
        if samples.size == 0:
            return []
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples, np.float32).reshape(1, -1), format="flt",
                                           layout="mono")
        frame.sample_rate = self.sample_rate_hz
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.sample_rate_hz)
        self._pts += samples.size
        return self._absorb(self._resampler.resample(frame))

    def flush(self) -> list[AudioChunk]:
        """End of utterance: drain the resampler and zero-pad the last partial frame."""
        chunks = self._absorb(self._resampler.resample(None))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=PLAYBACK_RATE_HZ)
        self._pts = 0
        if self._playback.size:
            missing = PLAYBACK_SAMPLES_PER_FRAME - self._playback.size
            chunks += self._absorb_samples(np.zeros(missing, np.float32))
        self._playback = np.zeros(0, np.float32)
        self._features = np.zeros(0, np.float32)
        return chunks

    def _absorb(self, frames: list[av.AudioFrame]) -> list[AudioChunk]:
        if not frames:
            return []
        return self._absorb_samples(np.concatenate([f.to_ndarray().reshape(-1) for f in frames]))

    def _absorb_samples(self, playback: np.ndarray) -> list[AudioChunk]:
        filtered, self._state = lfilter(self._taps, 1.0, playback.astype(np.float64), zi=self._state)
        decimated = filtered[self._phase::3].astype(np.float32)
        self._phase = (self._phase - playback.size) % 3
        self._playback = np.concatenate([self._playback, playback.astype(np.float32)])
        self._features = np.concatenate([self._features, decimated])
        chunks = []
        while self._playback.size >= PLAYBACK_SAMPLES_PER_FRAME and self._features.size >= FEATURE_SAMPLES_PER_FRAME:
            play, self._playback = np.split(self._playback, [PLAYBACK_SAMPLES_PER_FRAME])
            feat, self._features = np.split(self._features, [FEATURE_SAMPLES_PER_FRAME])
            speech = True
            if self.detect_speech:
                rms = float(np.sqrt(np.mean(play.astype(np.float64) ** 2)))
                speech = rms > 0 and 20 * math.log10(rms) > SPEECH_LEVEL_DBFS
            chunks.append(AudioChunk(play, feat, speech))
        return chunks


class AudioQueue:
    """FIFO of per-frame chunks, bounded at ``max_frames``.

    Overflow rule: an utterance that does not fit is refused whole (``PayloadTooLargeError``) and nothing
    already queued is dropped; live chunks (``extend_live``) instead drop the oldest queued *live* audio beyond
    ``max_live_frames``, so a live microphone never builds up latency. Live audio never drops queued speech: a
    script line cued while the microphone is on is spoken whole, and the live voice queued behind it is cut to
    its newest ``max_live_frames`` until the line ends.
    """

    def __init__(self, max_frames: int, max_live_frames: int = 8) -> None:
        self.max_frames = max_frames
        self.max_live_frames = max_live_frames
        self.dropped_live = 0
        self._chunks: deque[AudioChunk] = deque()
        self._live: deque[AudioChunk] = deque()  # the queued live chunks, oldest first (also in _chunks)

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

    def extend_live(self, chunks: list[AudioChunk]) -> int:
        """Queue live chunks, dropping the oldest live ones beyond ``max_live_frames``; returns how many were
        dropped. Queued speech that is not live is never dropped here."""
        self._chunks.extend(chunks)
        self._live.extend(chunks)
        dropped = 0
        while len(self._live) > self.max_live_frames:
            oldest = self._live.popleft()
            self._remove(oldest)
            dropped += 1
        self.dropped_live += dropped
        return dropped

    def _remove(self, chunk: AudioChunk) -> None:
        for index, queued in enumerate(self._chunks):  # by identity: equal-looking chunks are distinct frames
            if queued is chunk:
                del self._chunks[index]
                return

    def pop(self) -> AudioChunk:
        """The next frame's audio, or silence when nothing is queued."""
        if not self._chunks:
            return SILENCE
        chunk = self._chunks.popleft()
        if self._live and self._live[0] is chunk:
            self._live.popleft()
        return chunk

    def clear(self) -> int:
        """Drop everything queued; returns how many frames were dropped."""
        dropped = len(self._chunks)
        self._chunks.clear()
        self._live.clear()
        return dropped
