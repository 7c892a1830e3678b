"""Text-to-speech backends for the live loop (espeak-ng built in; others register in ``TTS_BACKENDS``).

``speak_sentences`` synthesises sentence by sentence, so speech starts as soon as the first sentence is ready
rather than after the whole script. A backend that cannot speak raises one of ``TTS_FAILURES``: the server
answers those with 503 (missing) or 502 (failed) and logs an event; the stream goes on either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from avatar.speech import Speech, Voice, synthesize_async
from twincast.errors import DependencyError, InputError, ToolError

TTS_FAILURES = (DependencyError, ToolError)  # the backend is missing or unavailable / it failed at its job


class TextToSpeech(Protocol):
    """A speech engine: text in, mono float speech out, without blocking the event loop."""

    name: str

    async def synthesize(self, text: str) -> Speech:
        """Speak one sentence.

        Raises:
            DependencyError: the backend is missing or did not answer in time.
            ToolError: the backend failed (rejected its voice, crashed).
        """
        ...


class EspeakTTS:
    """espeak-ng through its command line (robotic, but always there and fast)."""

    name = "espeak-ng"

    def __init__(self, voice: Voice) -> None:
        self.voice = voice

    async def synthesize(self, text: str) -> Speech:
        return await synthesize_async(text, self.voice)


TTS_BACKENDS: dict[str, Callable[[Voice], TextToSpeech]] = {"espeak-ng": EspeakTTS}


def make_tts(name: str, voice: Voice) -> TextToSpeech:
    """Build a registered TTS backend."""
    if name not in TTS_BACKENDS:
        raise InputError(f"unknown TTS backend {name!r}; expected one of {sorted(TTS_BACKENDS)}")
    return TTS_BACKENDS[name](voice)


async def speak_sentences(tts: TextToSpeech, sentences: list[str],
                          enqueue: Callable[[Speech], Awaitable[bool]]) -> int:
    """Synthesise ``sentences`` one at a time, handing each to ``enqueue`` as soon as it is ready.

    ``enqueue`` returns False to stop early (the speech was interrupted). Returns the sentences spoken; a
    failure raises what the backend (or ``enqueue``) raised, the sentences before it being spoken already.
    """
    spoken = 0
    for sentence in sentences:
        speech = await tts.synthesize(sentence)
        if not await enqueue(speech):
            break
        spoken += 1
        await asyncio.sleep(0)
    return spoken
