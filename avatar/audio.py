"""Audio timing and features shared by enrollment, training and the live loop.

One video frame at 25 fps is 40 ms and owns exactly 1920 samples at 48 kHz (playback) and 640 samples at
16 kHz (features). The log-mel window of frame *n* is computed by one function everywhere, so the features the
model trains on and the features the live loop feeds it are the same numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from twincast.errors import InputError

VIDEO_FPS = 25
PLAYBACK_RATE_HZ = 48_000
FEATURE_RATE_HZ = 16_000
PLAYBACK_SAMPLES_PER_FRAME = PLAYBACK_RATE_HZ // VIDEO_FPS  # 1920
FEATURE_SAMPLES_PER_FRAME = FEATURE_RATE_HZ // VIDEO_FPS  # 640


@dataclass(frozen=True)
class MelSpec:
    """Log-mel parameters: 80 bins at 16 kHz, 12.5 ms hop, a 200 ms window per video frame.

    The window mostly looks back: its last STFT frame is centred ``lookahead_ms`` after the video frame's
    centre. Every millisecond of look-ahead is a millisecond the live loop must wait before it can render, so
    the default keeps 20 ms (the mouth follows the sound at its centre; the past gives the context).
    """

    sample_rate_hz: int = FEATURE_RATE_HZ
    fps: int = VIDEO_FPS
    n_fft: int = 800
    hop: int = 200
    n_mels: int = 80
    window_frames: int = 16
    fmin_hz: float = 55.0
    fmax_hz: float = 7600.0
    lookahead_ms: float = 20.0

    def __post_init__(self) -> None:
        if self.sample_rate_hz % self.fps:
            raise InputError(f"mel sample_rate_hz {self.sample_rate_hz} is not a multiple of fps {self.fps}")
        if self.window_frames < 1 or self.window_frames * self.hop % 2:
            raise InputError(f"mel window_frames {self.window_frames} × hop {self.hop} must be even and > 0")
        span_ms = 1000 * (self.window_frames - 1) * self.hop / self.sample_rate_hz
        if not 0 <= self.lookahead_ms <= span_ms:
            raise InputError(f"mel lookahead_ms {self.lookahead_ms} must be in 0..{span_ms:g}")

    @property
    def samples_per_frame(self) -> int:
        """Audio samples (at ``sample_rate_hz``) owned by one video frame."""
        return self.sample_rate_hz // self.fps

    def centres(self) -> np.ndarray:
        """Sample offsets of the STFT frame centres, relative to the video frame's centre sample."""
        last = round(self.lookahead_ms * self.sample_rate_hz / 1000)
        return last - (self.window_frames - 1 - np.arange(self.window_frames)) * self.hop

    def offsets(self) -> np.ndarray:
        """Sample offsets of the STFT frame starts, relative to the video frame's centre sample."""
        return (self.centres() - self.n_fft // 2).astype(np.int64)

    @property
    def future_frames(self) -> int:
        """Video frames after frame *n* whose audio its window reads: the live loop's look-ahead K."""
        reach = int(self.centres()[-1]) + self.n_fft // 2 + self.samples_per_frame // 2
        return max(0, math.ceil(reach / self.samples_per_frame) - 1)

    @property
    def past_frames(self) -> int:
        """Video frames before frame *n* whose audio its window reads."""
        reach = -int(self.centres()[0]) + self.n_fft // 2 - self.samples_per_frame // 2
        return max(0, math.ceil(reach / self.samples_per_frame))


@functools.lru_cache(maxsize=8)
def _mel_filterbank(spec: MelSpec) -> np.ndarray:
    """Triangular mel filters (HTK mel scale), shape (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(hz: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def mel_to_hz(mel: np.ndarray) -> np.ndarray:
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)

    bins = spec.n_fft // 2 + 1
    fft_hz = np.linspace(0.0, spec.sample_rate_hz / 2, bins)
    edges_mel = np.linspace(hz_to_mel(np.array(spec.fmin_hz)), hz_to_mel(np.array(spec.fmax_hz)), spec.n_mels + 2)
    edges_hz = mel_to_hz(edges_mel)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (fft_hz[None, :] - lower) / (centre - lower)
    falling = (upper - fft_hz[None, :]) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    filters *= (2.0 / (upper - lower))  # Slaney-style area normalisation keeps bins comparable
    return filters.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _hann(n_fft: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)


_MEL_CHUNK_FRAMES = 256  # frames per slice in mel_windows (its intermediates are ~30 MB per 256 frames)


def mel_windows(samples: np.ndarray, frame_indices: np.ndarray, spec: MelSpec, first_frame: int = 0) -> np.ndarray:
    """Log-mel windows for video frames, shape (len(frame_indices), n_mels, window_frames), float32.

    Args:
        samples: mono float audio at ``spec.sample_rate_hz`` whose first sample belongs to video frame
            ``first_frame``; audio outside it counts as silence.
        frame_indices: the video frames to compute windows for.
        spec: the mel parameters.
        first_frame: the video frame index of ``samples[0]``.
    """
    if samples.ndim != 1:
        raise InputError(f"mel_windows expects mono audio (1-D), got shape {samples.shape}")
    frame_indices = np.asarray(frame_indices, dtype=np.int64)
    if frame_indices.size > _MEL_CHUNK_FRAMES:  # bounded memory: minutes of footage in slices of frames
        return np.concatenate([mel_windows(samples, frame_indices[start : start + _MEL_CHUNK_FRAMES], spec,
                                           first_frame) for start in range(0, frame_indices.size, _MEL_CHUNK_FRAMES)])
    centres = (frame_indices - first_frame) * spec.samples_per_frame + spec.samples_per_frame // 2
    starts = centres[:, None] + spec.offsets()[None, :]
    gather = starts[:, :, None] + np.arange(spec.n_fft)[None, None, :]
    valid = (gather >= 0) & (gather < samples.shape[0])
    padded = np.where(valid, samples[np.clip(gather, 0, max(samples.shape[0] - 1, 0))] if samples.size else 0.0, 0.0)
    spectrum = np.fft.rfft(padded.astype(np.float32) * _hann(spec.n_fft), axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = power @ _mel_filterbank(spec).T  # (frames, window, n_mels)
    features = (np.log10(np.maximum(mel, 1e-10)) + 4.0) / 4.0
    return np.ascontiguousarray(features.transpose(0, 2, 1), dtype=np.float32)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited rational resampling of mono float audio."""
    if from_hz == to_hz:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly  # imported here so GPU benchmark machines need no SciPy

    ratio = Fraction(to_hz, from_hz)
    return resample_poly(samples, ratio.numerator, ratio.denominator).astype(np.float32)


def split_frames(samples: np.ndarray, samples_per_frame: int) -> np.ndarray:
    """Cut audio into whole video-frame chunks, zero-padding the last one; shape (frames, samples_per_frame)."""
    frames = max(1, math.ceil(samples.shape[0] / samples_per_frame))
    padded = np.zeros(frames * samples_per_frame, dtype=np.float32)
    padded[: samples.shape[0]] = samples
    return padded.reshape(frames, samples_per_frame)


def rms_dbfs(samples: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf for digital silence)."""
    if samples.size == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return 20.0 * math.log10(rms) if rms > 0 else float("-inf")
