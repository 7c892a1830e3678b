"""Audio that arrives as a whole: an uploaded file (``POST /api/play``) or an agent's spoken answer (raw PCM or a
file), decoded to what the speech queue takes."""

from __future__ import annotations

import io
import itertools

import av
import numpy as np

from avatar.audio import PLAYBACK_RATE_HZ
from avatar.speech import Speech
from twincast.errors import LimitError, UnprocessableError

MIN_FILE_RATE_HZ, MAX_FILE_RATE_HZ = 8_000, 384_000


def decode_audio_file(payload: bytes, max_seconds: float) -> Speech:
    """Decode any audio file PyAV reads (wav, mp3, ogg, m4a, …) to mono float at 48 kHz.

    FFmpeg's resampler takes any source rate; decoding stops as soon as the audio is longer than
    ``max_seconds``, so a small file that decodes to hours (silence compresses well) is refused before it is
    held in memory.

    Raises:
        UnprocessableError: not decodable audio, a sample rate outside 8 kHz..384 kHz, or no samples.
        LimitError: longer than ``max_seconds`` (413; ``max_queued_speech_s``).
    """
    parts: list[np.ndarray] = []
    samples = 0
    try:
        with av.open(io.BytesIO(payload), mode="r") as container:
            if not container.streams.audio:
                raise UnprocessableError("the uploaded file has no audio stream; expected wav, mp3, ogg or m4a")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            if not MIN_FILE_RATE_HZ <= rate <= MAX_FILE_RATE_HZ:
                raise UnprocessableError(f"the uploaded audio's sample rate {rate} Hz is outside "
                                         f"{MIN_FILE_RATE_HZ}..{MAX_FILE_RATE_HZ} Hz")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=PLAYBACK_RATE_HZ)
            for frame in itertools.chain(container.decode(stream), [None]):  # None drains the resampler
                for out in resampler.resample(frame):
                    parts.append(out.to_ndarray().reshape(-1))
                    samples += parts[-1].size
                if samples > max_seconds * PLAYBACK_RATE_HZ:
                    raise LimitError(f"the uploaded audio is longer than the speech queue holds "
                                     f"({max_seconds:g} s, max_queued_speech_s)", limit="max_queued_speech_s",
                                     value=max_seconds, http_status=413)
    except av.error.FFmpegError as exc:
        raise UnprocessableError(f"the uploaded file is not decodable audio: {exc}") from exc
    if not samples:
        raise UnprocessableError("the uploaded audio holds no samples")
    return Speech(np.concatenate(parts).astype(np.float32), PLAYBACK_RATE_HZ)


def decode_pcm(payload: bytes, rate_hz: int, channels: int, *, big_endian: bool, max_seconds: float,
               what: str) -> Speech:
    """Raw signed 16-bit PCM (interleaved ``channels``) to mono float at its own rate.

    Raises:
        UnprocessableError: a rate outside 8 kHz..384 kHz, a channel count outside 1..8, a byte count that is not
            whole samples of every channel, or no samples.
        LimitError: longer than ``max_seconds`` (413; ``max_queued_speech_s``).
    """
    if not MIN_FILE_RATE_HZ <= rate_hz <= MAX_FILE_RATE_HZ:
        raise UnprocessableError(f"{what}: sample rate {rate_hz} Hz is outside "
                                 f"{MIN_FILE_RATE_HZ}..{MAX_FILE_RATE_HZ} Hz")
    if not 1 <= channels <= 8:
        raise UnprocessableError(f"{what}: {channels} channels; expected 1 to 8")
    frame_bytes = 2 * channels
    if not payload or len(payload) % frame_bytes:
        raise UnprocessableError(f"{what}: {len(payload)} bytes is not a whole number of {channels}-channel 16-bit "
                                 "samples")
    seconds = len(payload) / frame_bytes / rate_hz
    if seconds > max_seconds:
        raise LimitError(f"{what} is longer than the speech queue holds ({max_seconds:g} s, max_queued_speech_s)",
                         limit="max_queued_speech_s", value=max_seconds, http_status=413)
    samples = np.frombuffer(payload, dtype=">i2" if big_endian else "<i2").reshape(-1, channels)
    return Speech((samples.astype(np.float32).mean(axis=1) / 32768.0).astype(np.float32), rate_hz)
