"""``TwincastVideoService``: a twincast twin as a pipecat video service, in the shape of pipecat's own avatar
services (Simli, Tavus, HeyGen): the pipeline's TTS audio goes to the twin, interruptions cut it off, and the
twin's synchronised pictures and sound come back into the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Literal

import aiohttp
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.ai_service import AIService
from pipecat.services.settings import ServiceSettings

from twincast_pipecat.push_client import AvatarPushClient, PushError, SpeakingEvent
from twincast_pipecat.whep import TwinReceiver, WhepError

Mode = Literal["return", "broadcast"]
MODES = ("return", "broadcast")
RETURN_TAIL_FRAMES = 10  # the WHEP stream runs about 5 frames behind the twin's egress: watch this many more


class TwincastVideoService(AIService):
    """Gives a pipecat voice agent a twincast face.

    Place it after the TTS service. ``TTSAudioRawFrame`` audio is pushed to the twin as it is produced (faster
    than real time is normal: the push client keeps the twin's queue under its limit, so nothing is dropped) and
    is not passed on; each ``TTSStoppedFrame`` ends an utterance; an ``InterruptionFrame`` interrupts the twin at
    once (its next frame to play is silent). Every other frame passes through.

    Modes:
        ``return``: the service also watches the twin over WHEP and emits its pictures (``OutputImageRawFrame``,
        25 fps, ``sync_with_audio`` set) and its sound (``SpeechOutputAudioRawFrame``, continuous, at the
        pipeline's output rate) downstream, in sync, for pipecat's output transport to send. Their ``pts`` is
        when the twin sent them (ns since the service connected; a picture's equals its sound's).
        ``broadcast``: the service only drives the twin; viewers watch twincast itself (its player page, WHEP,
        OBS, RTMP). It then tells the pipeline when the twin speaks: ``BotStartedSpeakingFrame`` and
        ``BotStoppedSpeakingFrame``, up and down, from the twin's speaking events.

    Event handlers: ``on_speaking(service, event)`` with each ``SpeakingEvent`` of the twin (started, stopped,
    interrupted, with the frame's time on the twin's stream).

    Args:
        url: the twincast server, e.g. ``http://127.0.0.1:8080``.
        token: its operator token, if it has one.
        session: the twincast session to drive (the server's default when None).
        mode: ``return`` or ``broadcast`` (see above).
        max_lead_s: the most speech to keep queued at the twin (default: its queue limit less a second).
        aiohttp_session: an HTTP session to use (one is made, and closed, when None).
    """

    def __init__(self, *, url: str, token: str | None = None, session: str | None = None, mode: Mode = "return",
                 max_lead_s: float | None = None, aiohttp_session: aiohttp.ClientSession | None = None,
                 **kwargs: Any) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} must be one of {MODES}")
        super().__init__(settings=ServiceSettings(model=None), **kwargs)
        self.url = url
        self.session = session
        self.mode = mode
        self.push_client = AvatarPushClient(url, token=token, session=session, max_lead_s=max_lead_s,
                                            on_speaking=self._on_speaking)
        self.receiver: TwinReceiver | None = None
        self._http = aiohttp_session
        self._owns_http = aiohttp_session is None
        self._out_rate_hz = 0
        self._connected = False
        self._twin_speaking = False  # between a started event and its stopped or interrupted
        self._speech_ended = asyncio.Event()  # set at each stopped or interrupted event
        self._register_event_handler("on_speaking")

    async def setup(self, setup: FrameProcessorSetup) -> None:  # type: ignore[override]  # as pipecat's own
        """Learn the pipeline's output sample rate (the twin's sound is resampled to it)."""
        await super().setup(setup)
        self._out_rate_hz = setup.audio_out_sample_rate

    async def start(self, frame: StartFrame) -> None:
        """Connect to the twin: its push socket, and in ``return`` mode its WHEP stream."""
        await super().start(frame)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            ready = await self.push_client.connect(self._http)
            if self.mode == "return":
                self.receiver = TwinReceiver(self.url, session=self.session, sample_rate_hz=self._out_rate_hz,
                                             on_picture=self._emit_picture, on_sound=self._emit_sound,
                                             spawn=lambda coroutine, name: self.create_task(coroutine, name))
                await self.receiver.connect(self._http)
        except (PushError, WhepError, aiohttp.ClientError) as exc:
            await self.push_error(error_msg=f"twincast at {self.url}: {exc}", exception=exc,
                                  force_treat_as_permanent=True)
            return
        self._connected = True
        logger.info(f"{self}: driving twincast session {ready.session!r} at {self.url} ({self.mode} mode, "
                    f"lead up to {self.push_client.max_lead_s:.0f} s)")

    async def stop(self, frame: EndFrame) -> None:
        """End gracefully: the last utterance is closed; in ``return`` mode the twin is watched until it has said
        all of it and that has come back over WHEP; then disconnect."""
        await super().stop(frame)
        if self._connected:
            try:
                await self.push_client.end()
                if self.mode == "return":
                    await self._wait_until_silent()
            except (PushError, WhepError) as exc:
                await self.push_error(error_msg=f"twincast at {self.url}: {exc}", exception=exc)
        await self._disconnect()

    async def _wait_until_silent(self) -> None:
        """Wait until the twin has nothing queued and is silent (woken by its speaking events)."""
        while True:
            self._speech_ended.clear()  # before asking, so an end announced after the reply is not missed
            status = await self.push_client.status()
            if not status.speaking:
                break
            with contextlib.suppress(TimeoutError):  # look at the queue again at least once it should be empty
                await asyncio.wait_for(self._speech_ended.wait(), timeout=status.queued_s + 1.0)
        if self.receiver is not None:
            await self.receiver.wait_for_pictures(RETURN_TAIL_FRAMES)

    async def cancel(self, frame: CancelFrame) -> None:
        """Stop at once: the twin is interrupted, then disconnect."""
        await super().cancel(frame)
        if self._connected:
            with contextlib.suppress(PushError):  # a socket the server closed has nothing left to interrupt
                await self.push_client.interrupt()
        await self._disconnect()

    async def cleanup(self) -> None:
        """Release the connections (idempotent)."""
        await super().cleanup()
        await self._disconnect()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Push TTS audio to the twin, turn interruptions into an interrupt, pass everything else on."""
        await super().process_frame(frame, direction)
        if isinstance(frame, InterruptionFrame):
            if self._connected:
                await self.push_client.interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame):
            await self._push_audio(frame)
        elif isinstance(frame, TTSStoppedFrame):
            if self._connected:
                await self._end_utterance()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def _push_audio(self, frame: TTSAudioRawFrame) -> None:
        if not self._connected:
            return  # start() reported why; the pipeline's unusable-processor policy decides what follows
        pcm = frame.audio
        if frame.num_channels > 1:
            samples = np.frombuffer(pcm, dtype="<i2").reshape(-1, frame.num_channels)
            pcm = samples.mean(axis=1).astype("<i2").tobytes()
        try:
            if self.push_client.rate_hz != frame.sample_rate:  # an utterance's first audio, or a new rate
                await self.push_client.end()
                await self.push_client.start(frame.sample_rate)
            await self.push_client.send_pcm(pcm)
        except PushError as exc:
            await self.push_error(error_msg=f"twincast refused speech: {exc}", exception=exc)

    async def _end_utterance(self) -> None:
        try:
            await self.push_client.end()
        except PushError as exc:
            await self.push_error(error_msg=f"twincast refused speech: {exc}", exception=exc)

    async def _emit_picture(self, rgb: np.ndarray, pts_ns: int) -> None:
        frame = OutputImageRawFrame(image=rgb.tobytes(), size=(rgb.shape[1], rgb.shape[0]), format="RGB")
        frame.sync_with_audio = True  # the output transport shows it after the sound that came before it
        frame.pts = pts_ns
        await self.push_frame(frame)

    async def _emit_sound(self, pcm: bytes, sample_rate_hz: int, pts_ns: int) -> None:
        frame = SpeechOutputAudioRawFrame(audio=pcm, sample_rate=sample_rate_hz, num_channels=1)
        frame.pts = pts_ns
        await self.push_frame(frame)

    async def _on_speaking(self, event: SpeakingEvent) -> None:
        was_speaking, self._twin_speaking = self._twin_speaking, event.state == "started"
        if not self._twin_speaking:
            self._speech_ended.set()
        if self.mode == "broadcast" and self._twin_speaking and not was_speaking:
            await self.broadcast_frame(BotStartedSpeakingFrame)
        elif self.mode == "broadcast" and was_speaking and not self._twin_speaking:
            await self.broadcast_frame(BotStoppedSpeakingFrame)
        await self._call_event_handler("on_speaking", event)

    async def _disconnect(self) -> None:
        self._connected = False
        if self.receiver is not None and self._http is not None:
            await self.receiver.close(self._http)
            self.receiver = None
        await self.push_client.close()
        if self._owns_http and self._http is not None:
            await self._http.close()
            self._http = None
