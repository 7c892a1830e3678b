"""Text to speech with espeak-ng, the built-in engine: text in, mono float audio out."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
import subprocess
import unicodedata
from dataclasses import dataclass

import numpy as np

from twincast.errors import DependencyError, InputError, ToolError, UnprocessableError

MAX_TEXT_CHARS = 5000
_UNSPOKEN_CATEGORIES = {"Cc", "Cf", "Cs"}  # control, format (bidi overrides, zero-width), lone surrogates
SYNTH_TIMEOUT_S = 120
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


@dataclass(frozen=True)
class Speech:
    """Synthesised speech: mono float32 samples in [-1, 1] and their sample rate."""

    samples: np.ndarray
    sample_rate_hz: int

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.samples.shape[0] / self.sample_rate_hz


@dataclass(frozen=True)
class Voice:
    """espeak-ng voice settings."""

    name: str = "en-us"
    words_per_minute: int = 160
    pitch: int = 50

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_+\-]{1,40}", self.name):
            raise InputError(f"voice name {self.name!r} is not an espeak-ng voice name like 'en-us'")
        if not 80 <= self.words_per_minute <= 450:
            raise InputError(f"voice words_per_minute {self.words_per_minute} is outside 80..450")
        if not 0 <= self.pitch <= 99:
            raise InputError(f"voice pitch {self.pitch} is outside 0..99")


def clean_text(text: str) -> str:
    """``text`` with every kind of whitespace (newlines, tabs, line separators) as a plain space, and control,
    format and lone surrogate characters removed: what reaches espeak-ng's command line or a log is one line of
    printable text (a NUL there used to be an error, an escape sequence a terminal trick)."""
    return "".join(" " if char.isspace() else char for char in text
                   if char.isspace() or unicodedata.category(char) not in _UNSPOKEN_CATEGORIES)


def check_text(text: str) -> str:
    """Return the text cleaned (``clean_text``) and stripped, or raise if nothing speakable remains.

    Raises:
        UnprocessableError: the text is empty, or holds no letter, digit or symbol.
        InputError: the text is longer than ``MAX_TEXT_CHARS``.
    """
    stripped = clean_text(text).strip()
    if not stripped:
        raise UnprocessableError("text is empty (or only whitespace and control characters); expected at least "
                                 "one word to speak")
    if len(stripped) > MAX_TEXT_CHARS:
        raise InputError(f"text has {len(stripped)} characters; at most {MAX_TEXT_CHARS} are accepted per request")
    if not any(unicodedata.category(char)[0] in "LNS" for char in stripped):
        raise UnprocessableError(f"text {stripped[:40]!r} has nothing to speak: no letter, digit or symbol")
    return stripped


def split_sentences(text: str) -> list[str]:
    """Split text into sentences at ., !, ?, ; and : followed by whitespace."""
    return [part.strip() for part in _SENTENCE_END.split(check_text(text)) if part.strip()]


def _espeak_command(text: str, voice: Voice) -> list[str]:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise DependencyError("espeak-ng is not installed; install it with `apt-get install espeak-ng`")
    return [binary, "--stdout", "-v", voice.name, "-s", str(voice.words_per_minute), "-p", str(voice.pitch), "--", text]


def synthesize(text: str, voice: Voice | None = None) -> Speech:
    """Speak ``text`` with espeak-ng (blocking; use ``synthesize_async`` on an event loop).

    Raises:
        UnprocessableError: empty text.
        DependencyError: espeak-ng is missing or did not finish in time.
        ToolError: espeak-ng failed (e.g. it rejected the voice).
        InputError: espeak-ng produced no audio.
    """
    voice = voice or Voice()
    command = _espeak_command(check_text(text), voice)
    try:
        result = subprocess.run(command, capture_output=True, timeout=SYNTH_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DependencyError(f"espeak-ng did not finish within {SYNTH_TIMEOUT_S} s") from exc
    except OSError as exc:  # found a moment ago, gone or unrunnable now (uninstalled while serving)
        raise DependencyError(f"espeak-ng could not be run ({exc.strerror}): {command[0]}") from exc
    return _parse_output(result.returncode, result.stdout, result.stderr, voice)


async def synthesize_async(text: str, voice: Voice | None = None) -> Speech:
    """Speak ``text`` with espeak-ng without blocking the event loop (raises as ``synthesize`` does)."""
    voice = voice or Voice()
    command = _espeak_command(check_text(text), voice)
    try:
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:  # found a moment ago, gone or unrunnable now (uninstalled while serving)
        raise DependencyError(f"espeak-ng could not be run ({exc.strerror}): {command[0]}") from exc
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=SYNTH_TIMEOUT_S)
    except TimeoutError as exc:
        process.kill()
        await process.wait()
        raise DependencyError(f"espeak-ng did not finish within {SYNTH_TIMEOUT_S} s") from exc
    return _parse_output(process.returncode or 0, stdout, stderr, voice)


def _parse_output(returncode: int, stdout: bytes, stderr: bytes, voice: Voice) -> Speech:
    if returncode != 0:
        raise ToolError(f"espeak-ng failed (exit {returncode}, voice {voice.name!r}): "
                        f"{stderr.decode(errors='replace').strip()[:300]}")
    return parse_wav(stdout)


def parse_wav(payload: bytes) -> Speech:
    """Parse a 16-bit PCM WAV, including espeak-ng's streamed form whose chunk sizes are placeholders.

    Raises:
        InputError: not a RIFF/WAVE PCM16 payload, or no samples in it.
    """
    if len(payload) < 12 or payload[:4] != b"RIFF" or payload[8:12] != b"WAVE":
        raise InputError("audio is not a RIFF/WAVE file")
    offset = 12
    sample_rate_hz = channels = bits = 0
    while offset + 8 <= len(payload):
        chunk_id = payload[offset : offset + 4]
        chunk_size = struct.unpack_from("<I", payload, offset + 4)[0]
        body = offset + 8
        if chunk_id == b"fmt ":
            audio_format, channels, sample_rate_hz = struct.unpack_from("<HHI", payload, body)
            bits = struct.unpack_from("<H", payload, body + 14)[0]
            if audio_format != 1 or bits != 16:
                raise InputError(f"WAV format {audio_format} with {bits}-bit samples; expected 16-bit PCM")
        elif chunk_id == b"data":
            if not sample_rate_hz:
                raise InputError("WAV data chunk comes before its fmt chunk")
            end = min(len(payload), body + chunk_size) if chunk_size < 0x7FFF0000 else len(payload)
            end -= (end - body) % (2 * channels)
            pcm = np.frombuffer(payload[body:end], dtype="<i2").reshape(-1, channels)
            if pcm.shape[0] == 0:
                raise InputError("speech synthesis produced no audio samples")
            mono = pcm.astype(np.float32).mean(axis=1) / 32768.0
            return Speech(samples=mono, sample_rate_hz=sample_rate_hz)
        offset = body + chunk_size + (chunk_size & 1)
    raise InputError("WAV has no data chunk")
