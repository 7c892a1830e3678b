"""Text-to-speech backends for the live loop (espeak-ng built in; others register in ``TTS_BACKENDS``).

``speak_sentences`` synthesises sentence by sentence, so speech starts as soon as the first sentence is ready
rather than after the whole script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from avatar.speech import Speech, Voice, split_sentences, synthesize_async
from twincast.errors import InputError


class TextToSpeech(Protocol):
    """A speech engine: text in, mono float speech out, without blocking the event loop."""

    name: str

    async def synthesize(self, text: str) -> Speech:
        """Speak one sentence."""
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


async def speak_sentences(tts: TextToSpeech, text: str, enqueue: Callable[[Speech], Awaitable[bool]]) -> int:
    """Synthesise ``text`` one sentence at a time, handing each to ``enqueue`` as soon as it is ready.

    ``enqueue`` returns False to stop early (the speech was interrupted). Returns the sentences spoken.
    """
    spoken = 0
    for sentence in split_sentences(text):
        speech = await tts.synthesize(sentence)
        if not await enqueue(speech):
            break
        spoken += 1
        await asyncio.sleep(0)
    return spoken
