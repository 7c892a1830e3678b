"""TwincastVideoService in real pipecat pipelines (espeak-ng TTS → the service → a recorder) against a real
twincast server: speech pushed far ahead is all spoken, an interruption silences the twin at once, back-pressure
keeps the twin's queue under the lead, and in return mode the twin comes back at 25 fps with its mouth on its
sound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from conftest import Twincast
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    SpeechOutputAudioRawFrame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from twincast_pipecat import EspeakTTSService, SpeakingEvent, TwincastVideoService
from twincast_pipecat.video_service import Mode

OUT_RATE_HZ = 48_000
FPS = 25
SENTENCES = [  # about 25 s of espeak-ng at 160 words per minute
    "The twin reads this first sentence while the agent is still writing the rest of its answer.",
    "A voice agent makes its speech far faster than anyone can say it, and pushes all of it at once.",
    "Nothing of it may be dropped, so the twin keeps every frame and speaks each one in its turn.",
    "The queue at the server holds minutes of speech, and the client never lets it overflow.",
    "When the last of these sentences has been said, the twin closes its mouth and waits.",
    "That is all the agent wanted to say for now, and the test counts every frame of it.",
]


UTTERANCES = ["One.", "Two.", "Three.", "Four.", "Five."]  # apart: each starts after a pause


class Tap(FrameProcessor):
    """Keeps what passes (TTS audio and stops before the service; pictures and sound after it), each with the
    time it came, and passes everything on."""

    def __init__(self) -> None:
        super().__init__()
        self.tts_s: dict[str, float] = {}  # seconds of TTS audio per context, in order
        self.tts_stops = 0
        self.pictures: list[tuple[int, np.ndarray]] = []  # (pts_ns, RGB)
        self.sound: list[tuple[float, np.ndarray]] = []
        self.order: list[str] = []  # "picture" / "sound", in the order they came

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, TTSAudioRawFrame):
            context = frame.context_id or ""
            self.tts_s[context] = self.tts_s.get(context, 0.0) + frame.num_frames / frame.sample_rate
        elif isinstance(frame, TTSStoppedFrame):
            self.tts_stops += 1
        elif isinstance(frame, OutputImageRawFrame):
            width, height = frame.size
            assert frame.pts is not None
            self.pictures.append((frame.pts, np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)))
            self.order.append("picture")
        elif isinstance(frame, SpeechOutputAudioRawFrame):
            assert frame.sample_rate == OUT_RATE_HZ and frame.num_channels == 1
            self.sound.append((now, np.frombuffer(frame.audio, np.int16)))
            self.order.append("sound")
        await self.push_frame(frame, direction)


@dataclass
class Rig:
    """A running pipeline: espeak-ng TTS → tap → TwincastVideoService → tap, and the twin's speaking events."""

    worker: PipelineWorker
    service: TwincastVideoService
    before: Tap
    after: Tap
    events: asyncio.Queue[SpeakingEvent] = field(default_factory=asyncio.Queue)
    heard: list[SpeakingEvent] = field(default_factory=list)

    async def next_event(self, timeout_s: float) -> SpeakingEvent:
        """The twin's next speaking event (fails after ``timeout_s``)."""
        event = await asyncio.wait_for(self.events.get(), timeout_s)
        self.heard.append(event)
        return event

    async def until(self, probe: Callable[[], Any], timeout_s: float, what: str) -> None:
        """Wait until ``probe()`` is true, failing after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not probe():
            assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
            await asyncio.sleep(0.02)


@asynccontextmanager
async def pipeline(twincast: Twincast, mode: Mode, **service_args: Any) -> AsyncIterator[Rig]:
    """Run the test pipeline until the block ends, then end it (EndFrame) and wait for it to finish."""
    service = TwincastVideoService(url=twincast.url, token=twincast.token, session=twincast.session, mode=mode,
                                   **service_args)
    before, after = Tap(), Tap()
    worker = PipelineWorker(Pipeline([EspeakTTSService(), before, service, after]),
                            params=PipelineParams(audio_out_sample_rate=OUT_RATE_HZ), idle_timeout_secs=None)
    rig = Rig(worker, service, before, after)

    @service.event_handler("on_speaking")
    async def on_speaking(_: TwincastVideoService, event: SpeakingEvent) -> None:
        rig.events.put_nowait(event)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run(), name="test-pipeline")
    try:
        await rig.until(lambda: service.push_client.ready is not None, 30, "connected to twincast")
        yield rig
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(running, 60)
    finally:
        running.cancel()


def test_speech_pushed_far_ahead_is_all_spoken_in_one_piece(twincast: Twincast) -> None:
    async def scenario() -> tuple[Rig, float]:
        async with pipeline(twincast, "broadcast") as rig:
            await rig.worker.queue_frames([TTSSpeakFrame(sentence) for sentence in SENTENCES])
            pushed_all = lambda: (rig.before.tts_stops == len(SENTENCES)  # noqa: E731
                                  and len(rig.service.push_client.utterances_s) == len(SENTENCES))
            await rig.until(pushed_all, 30, "every sentence synthesised and queued")
            queued_s = (await rig.service.push_client.status()).queued_s
            assert (await rig.next_event(10)).state == "started"
            assert (await rig.next_event(60)).state == "stopped"
        return rig, queued_s

    rig, queued_after_push_s = asyncio.run(scenario())
    tts_s = list(rig.before.tts_s.values())
    client = rig.service.push_client
    assert sum(tts_s) > 20.0 and len(tts_s) == len(SENTENCES)
    assert client.pushed_s == pytest.approx(sum(tts_s), abs=1e-6)  # every TTS sample went out ...
    assert client.utterances_s == pytest.approx(tts_s, abs=0.05)  # ... and was queued, utterance by utterance
    assert client.refusals == [] and client.waits == 0
    assert queued_after_push_s > 10.0  # pushed far ahead of the twin's speaking, and none of it refused
    started, stopped = rig.heard
    spoken_frames = round(sum(client.utterances_s) * FPS)
    # one unbroken stretch of speech, exactly as long as what was queued: nothing dropped, nothing inserted
    assert stopped.frames == spoken_frames == stopped.frame_index - started.frame_index
    assert stopped.pts_s - started.pts_s == pytest.approx(spoken_frames / FPS)
    assert rig.after.pictures == [] and rig.after.sound == []  # broadcast mode brings nothing back


def test_an_interruption_frame_silences_the_twin_at_once_and_its_tail_is_never_spoken(
        twincast: Twincast, record_property: Callable[[str, object], None]) -> None:
    async def scenario() -> tuple[Rig, float, dict[str, Any]]:
        async with pipeline(twincast, "broadcast") as rig:
            await rig.worker.queue_frames([TTSSpeakFrame(sentence) for sentence in SENTENCES[:3]])
            assert (await rig.next_event(20)).state == "started"  # it is speaking: the interrupt cuts it
            sent_at = time.monotonic()
            await rig.worker.queue_frame(InterruptionFrame())
            interrupted = await rig.next_event(5)
            silent = await asyncio.get_running_loop().run_in_executor(None, twincast.stats)
            await rig.worker.queue_frames([TTSSpeakFrame("Said after the interruption.")])
            assert (await rig.next_event(20)).state == "started"
            assert (await rig.next_event(20)).state == "stopped"
        return rig, (interrupted.received_at_s - sent_at) * 1000 + (interrupted.silent_in_ms or 0.0), silent

    rig, latency_ms, silent = asyncio.run(scenario())
    started, interrupted, again, stopped = rig.heard
    record_property("interruption_frame_to_silent_ms", round(latency_ms, 1))
    record_property("interrupt_read_to_silent_frame_ms", interrupted.silent_in_ms)
    assert interrupted.state == "interrupted" and interrupted.generation == started.generation + 1
    assert interrupted.frames is not None and interrupted.frames > 0  # it cut speech that was playing
    assert interrupted.dropped_s is not None and interrupted.dropped_s > 5.0
    assert interrupted.silent_in_ms is not None and 0 < interrupted.silent_in_ms <= 1000 / FPS  # the next frame
    assert latency_ms < 1000  # the interrupt did not wait behind the audio still queued in the pipeline
    assert silent["queue"]["speech_frames"] == 0
    # the next utterance is spoken alone: none of the interrupted sentences' audio came after the interrupt
    assert stopped.frames == round(rig.service.push_client.utterances_s[-1] * FPS)
    assert again.frame_index > interrupted.frame_index and again.generation == interrupted.generation


def test_back_pressure_keeps_the_twin_queue_under_the_lead_and_drops_nothing(twincast: Twincast) -> None:
    async def scenario() -> Rig:
        async with pipeline(twincast, "broadcast", max_lead_s=3.0) as rig:
            await rig.worker.queue_frames([TTSSpeakFrame(sentence) for sentence in SENTENCES[:2]])
            assert (await rig.next_event(20)).state == "started"
            assert (await rig.next_event(40)).state == "stopped"
        return rig

    rig = asyncio.run(scenario())
    client = rig.service.push_client
    assert client.waits > 0  # it had to wait for room ...
    assert client.peak_queued_s <= 3.0 + 0.04  # ... and never had more than its lead queued (a frame of padding)
    assert client.refusals == []
    assert rig.heard[-1].frames == round(sum(client.utterances_s) * FPS)  # and all of it was spoken


def mouth_activity(pictures: np.ndarray, idle: np.ndarray) -> np.ndarray:
    """Per picture, how far the 300 pixels that change most over the run (the mouth: the pose is still) are
    from the idle picture, in grey levels."""
    change = np.abs(pictures.astype(np.float32) - idle).mean(axis=-1)
    moving = np.argsort(change.std(axis=0).ravel())[-300:]
    return np.asarray(change.reshape(len(pictures), -1)[:, moving].mean(axis=1))


def onsets(times_s: np.ndarray, active: np.ndarray, quiet_s: float) -> np.ndarray:
    """Times at which ``active`` turns on after at least ``quiet_s`` off."""
    found, off_since = [], -np.inf
    for at, on, was in zip(times_s[1:], active[1:], active[:-1], strict=True):
        if on and not was and at - off_since >= quiet_s:
            found.append(at)
        if was and not on:
            off_since = at
    return np.array(found)


def test_return_mode_brings_the_twin_back_in_sync_at_25_fps(
        twincast: Twincast, record_property: Callable[[str, object], None]) -> None:
    async def scenario() -> Rig:
        async with pipeline(twincast, "return") as rig:
            await rig.until(lambda: len(rig.after.pictures) >= FPS, 10, "the twin's pictures coming back")
            await rig.worker.queue_frames([TTSSpeakFrame(word) for word in UTTERANCES])
            assert (await rig.next_event(20)).state == "started"
            assert (await rig.next_event(20)).state == "stopped"
        return rig

    rig = asyncio.run(scenario())
    pictures = np.stack([picture for _, picture in rig.after.pictures])
    sound = np.concatenate([block for _, block in rig.after.sound]).astype(np.float32)
    pts_s = np.array([pts for pts, _ in rig.after.pictures]) / 1e9
    # 25 fps: the pictures are 40 ms apart on the twin's clock, and (nearly) none was lost on the way
    assert float(np.median(np.diff(pts_s))) == pytest.approx(1 / FPS, rel=0.02)
    arrived = len(pictures) / (round((pts_s[-1] - pts_s[0]) * FPS) + 1)
    assert arrived > 0.9
    assert len(sound) / OUT_RATE_HZ == pytest.approx(pts_s[-1] - pts_s[0], abs=0.5)  # sound all along
    # each picture's place on the sound's timeline: after the sound handed over before it, as pipecat's output
    # transport shows a sync_with_audio picture
    sound_ends = np.cumsum([0] + [len(block) for _, block in rig.after.sound])
    starts, blocks = [], 0
    for kind in rig.after.order:
        if kind == "sound":
            blocks += 1
        else:
            starts.append(int(sound_ends[blocks]))
    picture_s = np.array(starts) / OUT_RATE_HZ
    block = OUT_RATE_HZ // 100  # 10 ms
    loudness = np.sqrt(np.mean(sound[: len(sound) // block * block].reshape(-1, block) ** 2, axis=1))
    sound_on = onsets(np.arange(len(loudness)) * 0.01, loudness > 0.1 * loudness.max(), quiet_s=0.2)
    idle = np.median(pictures[picture_s < sound_on[0]], axis=0)
    mouth = mouth_activity(pictures, idle)
    opened = mouth > (mouth.max() + np.median(mouth[picture_s < sound_on[0]])) / 2
    mouth_on = onsets(picture_s, opened, quiet_s=0.12)
    lags_ms = [round(1000 * (mouth_on[np.argmin(abs(mouth_on - at))] - at)) for at in sound_on
               if len(mouth_on) and np.min(abs(mouth_on - at)) < 0.2]
    record_property("pictures_arrived", f"{len(pictures)} ({arrived:.1%})")
    record_property("mouth_onset_minus_sound_onset_ms", lags_ms)
    assert len(lags_ms) >= len(UTTERANCES) - 1  # the mouth opened at (nearly) every word
    assert abs(float(np.median(lags_ms))) <= 60  # and with its sound: within a frame and a half
