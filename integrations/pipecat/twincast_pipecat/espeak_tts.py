"""espeak-ng as a pipecat TTS service: offline, instant and robotic (for examples and tests without a cloud)."""

from __future__ import annotations

import asyncio
import shutil
import struct
from collections.abc import AsyncGenerator
from typing import Any

import av
import numpy as np
from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TTSService

SYNTH_TIMEOUT_S = 30.0


class EspeakError(Exception):
    """espeak-ng is missing, failed, or wrote something that is not 16-bit PCM WAV."""


def parse_wav(payload: bytes) -> tuple[np.ndarray, int]:
    """The 16-bit samples (mono, int16) and sample rate of a RIFF/WAVE file, including espeak-ng's streamed form,
    whose chunk sizes are placeholders.

    Raises:
        EspeakError: not 16-bit PCM WAV, or no samples.
    """
    if len(payload) < 12 or payload[:4] != b"RIFF" or payload[8:12] != b"WAVE":
        raise EspeakError(f"espeak-ng wrote {len(payload)} bytes that are not a RIFF/WAVE file")
    offset, rate_hz, channels = 12, 0, 0
    while offset + 8 <= len(payload):
        chunk_id, size = payload[offset : offset + 4], struct.unpack_from("<I", payload, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            audio_format, channels, rate_hz = struct.unpack_from("<HHI", payload, body)
            bits = struct.unpack_from("<H", payload, body + 14)[0]
            if audio_format != 1 or bits != 16:
                raise EspeakError(f"WAV format {audio_format} with {bits}-bit samples; expected 16-bit PCM")
        elif chunk_id == b"data" and channels:
            end = len(payload) if size >= 0x7FFF0000 else min(len(payload), body + size)
            end -= (end - body) % (2 * channels)
            samples = np.frombuffer(payload[body:end], dtype="<i2").reshape(-1, channels).mean(axis=1)
            if samples.size == 0:
                raise EspeakError("espeak-ng produced no samples")
            return samples.astype(np.int16), rate_hz
        offset = body + size + (size & 1)
    raise EspeakError("espeak-ng's WAV has no fmt and data chunks")


async def espeak(text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, int]:
    """Speak ``text`` with espeak-ng; returns int16 mono samples and their rate (22050 Hz for its own voices).

    Raises:
        EspeakError: espeak-ng is not installed, failed (its message), or took longer than ``SYNTH_TIMEOUT_S``.
    """
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise EspeakError("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    process = await asyncio.create_subprocess_exec(
        binary, "--stdout", "-v", voice, "-s", str(words_per_minute), "--", text,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=SYNTH_TIMEOUT_S)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise EspeakError(f"espeak-ng did not finish within {SYNTH_TIMEOUT_S:g} s") from exc
    if process.returncode:
        raise EspeakError(f"espeak-ng failed (exit {process.returncode}, voice {voice!r}): "
                          f"{stderr.decode(errors='replace').strip()[:300]}")
    return parse_wav(stdout)


def resample_int16(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Mono int16 samples at ``from_hz`` resampled to ``to_hz`` (FFmpeg's resampler, drained to the end)."""
    if from_hz == to_hz:
        return samples
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = from_hz
    resampler = av.AudioResampler(format="s16", layout="mono", rate=to_hz)
    parts = [out.to_ndarray().reshape(-1) for source in (frame, None) for out in resampler.resample(source)]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


class EspeakTTSService(TTSService):
    """Text to speech with the espeak-ng program: each sentence is synthesised whole (espeak-ng speaks about a
    hundred times faster than real time) and handed on in ``chunk_size`` pieces at the service's sample rate.

    Args:
        voice: an espeak-ng voice name, e.g. ``en-us``.
        words_per_minute: speaking rate.
        **kwargs: passed to pipecat's ``TTSService`` (``sample_rate``, text aggregation, …).
    """

    def __init__(self, *, voice: str = "en-us", words_per_minute: int = 160, **kwargs: Any) -> None:
        if not 80 <= words_per_minute <= 450:
            raise ValueError(f"words_per_minute {words_per_minute} is outside espeak-ng's 80..450")
        super().__init__(push_start_frame=True, push_stop_frames=True,
                         settings=TTSSettings(model=None, voice=voice, language=None), **kwargs)
        self.voice = voice
        self.words_per_minute = words_per_minute

    def can_generate_metrics(self) -> bool:
        """espeak-ng's time to first byte is measured like any TTS service's."""
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Synthesise ``text`` and yield its audio (or an ``ErrorFrame`` saying why there is none)."""
        try:
            samples, rate_hz = await espeak(text, self.voice, self.words_per_minute)
        except EspeakError as exc:
            yield ErrorFrame(error=str(exc))
            return
        await self.start_tts_usage_metrics(text)
        await self.stop_ttfb_metrics()
        pcm = resample_int16(samples, rate_hz, self.sample_rate).tobytes()
        step = self.chunk_size
        for offset in range(0, len(pcm), step):
            yield TTSAudioRawFrame(pcm[offset : offset + step], self.sample_rate, 1, context_id=context_id)
