"""One live twin session: its clock, its audio, its pose, and the frames rendered for it.

Timeline: on producer tick *j* (at clock deadline *j*) the next queued audio chunk becomes frame *j*'s audio,
and frame *n = j − K* is submitted for rendering, K being the mel window's look-ahead in frames
(``MelSpec.future_frames``). Frame *n* plays out at deadline *n + K + L*, L frames of render lead later, with
its own audio: audio and video are locked by construction. (The whole path of a frame, tick to encoder, is in
the ``stream`` package's docstring.)

The session announces its changes as events (``session.on(name, handler)``, aiortc's style): ``speaking``
(bool) when speech is first queued or playing and when it has stopped playing, ``playout`` (playing: bool, frame
index) on the tick at which the first frame of speech, or the first silent frame after it, plays out (a frame's
time on the stream is its index / fps), ``interrupted`` (first silent frame index, frames of queued speech dropped)
on every interrupt, ``late`` (frame index) for a frame rendered after its deadline,
``live_dropped`` (frames) when live audio is dropped to bound latency, ``pose_fallback`` when a lost webcam
hands the head back to the footage loop, ``degraded`` (reason) and ``recovered`` (seconds degraded) around an
engine failure or stall, ``speech_failed`` (message) when text to speech fails, in the request or in a later
sentence synthesised in the background (or a later sentence does not fit in the speech queue), and
``twin_switched`` (previous twin's name, new twin's name) on the tick a switch of twins takes effect.

Faults degrade, never stop, the stream: a frame whose render is missing (failed, or more than a frame or two
late) is shown as its un-rendered base frame — the footage loop goes on, its mouth as filmed — rather than
freezing the last render; the session is ``degraded`` from the first failed render (or after
``STALL_FRAMES`` without one in time) until ``RECOVER_AFTER_FRAMES`` frames in a row render in time again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np
from pyee import EventEmitter

from avatar.audio import PLAYBACK_SAMPLES_PER_FRAME, MelSpec, mel_windows
from avatar.speech import Speech, split_sentences
from model.render_inputs import RenderInputs
from stream.assets import TwinAssets
from stream.audio_queue import SILENCE, AudioChunk, AudioQueue, prepare_chunks
from stream.canvas import Compositor
from stream.clock import MediaClock
from stream.pose import PoseController
from stream.render_worker import RenderedFrame, RenderFailure, RenderJob, RenderWorker
from stream.stats import DegradedStats, TimelineStats
from stream.tts import TTS_FAILURES, TextToSpeech, speak_sentences
from twincast.errors import InputError, PayloadTooLargeError, UnprocessableError

log = logging.getLogger(__name__)
T = TypeVar("T")
Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]
IDLE_AFTER_MISSED_FRAMES = 3  # a render this many frames overdue: show the base frame, not a frozen render
STALL_FRAMES = 25  # no render shown for this many frames (1 s): degraded, even without a reported failure
RECOVER_AFTER_FRAMES = 50  # frames rendered in time in a row (2 s) that end a degraded state: a flapping or
# borderline engine stays degraded rather than announcing a recovery every second


class FrameRing(Generic[T]):
    """Fixed-size store of the most recent items keyed by frame index; older entries are overwritten."""

    def __init__(self, size: int) -> None:
        self._keys: list[int | None] = [None] * size
        self._items: list[T | None] = [None] * size

    def put(self, index: int, item: T) -> None:
        """Store ``item`` for ``index`` (evicting whatever shared its slot)."""
        slot = index % len(self._keys)
        self._keys[slot] = index
        self._items[slot] = item

    def get(self, index: int) -> T | None:
        """The item stored for ``index``, if still present."""
        slot = index % len(self._keys)
        return self._items[slot] if self._keys[slot] == index else None

    def keys(self) -> list[int]:
        """Indices currently stored."""
        return [key for key in self._keys if key is not None]

    def discard_from(self, index: int) -> None:
        """Forget every entry at or after ``index``."""
        for slot, key in enumerate(self._keys):
            if key is not None and key >= index:
                self._keys[slot] = None
                self._items[slot] = None


@dataclass(frozen=True)
class VideoOut:
    """A frame ready for the video track: planar yuv420p, its generation and the base frame under it."""

    i420: np.ndarray
    generation: int
    base_index: int


@dataclass(frozen=True)
class Twin:
    """A loaded twin: its prepared assets and the engine that renders it."""

    name: str
    assets: TwinAssets
    engine: str
    mel_spec: MelSpec
    crop_px: int


@dataclass(frozen=True)
class TwinSwitch:
    """A switch to another twin, waiting for the session's next tick."""

    twin: Twin
    noise: np.ndarray
    compositor: Compositor


class TwinSession(EventEmitter):
    """A live twin session, driven by ``run()`` on the event loop; announces changes as events (see the module)."""

    def __init__(self, session_id: str, twin: Twin, worker: RenderWorker, clock: MediaClock, *, tts: TextToSpeech,
                 pose_mode: str, lead_frames: int, noise: np.ndarray, max_queued_frames: int, spawn: Spawn,
                 compositor: Compositor | None = None) -> None:
        super().__init__()
        self.session_id = session_id
        self.twin = twin
        self.assets = twin.assets
        # Composes every frame: the pack's own frame, or the broadcast canvas, with the on-screen elements.
        self.compositor = compositor or Compositor(twin.assets, clock.fps)
        self.worker = worker
        self.clock = clock
        self.mel_spec = twin.mel_spec
        self.tts = tts
        self.pose = PoseController(twin.assets.base_poses, pose_mode, now=clock.now,
                                   on_fallback=self._pose_fell_back)
        self.lookahead = self.mel_spec.future_frames
        self.history = self.mel_spec.past_frames
        self.lead = lead_frames
        self.noise = noise
        self.generation = 0
        self.audio_queue = AudioQueue(max_queued_frames)
        self._spawn = spawn
        ring = 4 * (self.history + self.lookahead + self.lead) + 16
        self._audio = FrameRing[AudioChunk](ring)
        self._video = FrameRing[VideoOut](ring)
        # the base frame each submitted frame is rendered over, and the compositor (twin) it was submitted with
        self._bases = FrameRing[tuple[Compositor, int]](ring)
        self._switch_to: TwinSwitch | None = None  # applied at the next tick (control before data)
        self._next_tick = 0
        self._idle: tuple[int, int, np.ndarray] | None = None  # the last frame shown un-rendered: frame, base, i420
        self._last_video: tuple[int, VideoOut] | None = None
        self._first_egress: int | None = None
        self._repeat_counted = -1
        self._speaking = False
        self._playing_speech = False  # whether the frame playing out now carries speech (the ``playout`` event)
        self.degraded: DegradedStats | None = None
        self._degraded_at = 0.0  # on the session clock
        self._rendered_in_a_row = 0
        self.late_frames = 0
        self.repeated_frames = 0
        self.idle_frames = 0
        self.failed_frames = 0
        self.dropped_stale = 0
        self.interrupts = 0
        self.egress_frames = 0
        self._deliveries: deque[float] = deque(maxlen=200)
        self._render_ms: deque[float] = deque(maxlen=500)
        self.last_interrupt: dict[str, float] = {}
        self.on("error", lambda error: log.error("session %s: event handler failed", session_id, exc_info=error))

    # --- timeline -------------------------------------------------------------------------------------------

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the video: the canvas's, or the pack's own frame."""
        return self.compositor.frame_size

    @property
    def delay_frames(self) -> int:
        """Frames between an audio chunk entering the timeline and its playout."""
        return self.lookahead + self.lead

    def playout_deadline(self, frame_index: float) -> float:
        """Clock time at which frame ``frame_index`` (fractional for 20 ms audio blocks) plays out."""
        return self.clock.deadline(frame_index + self.delay_frames)

    def playout_index(self) -> int:
        """The frame playing out now."""
        return self.clock.frame_at() - self.delay_frames

    async def run(self) -> None:
        """The producer: one tick per frame period, forever (cancel to stop)."""
        while True:
            tick = self._next_tick
            await self.clock.sleep_until(self.clock.deadline(tick))
            self._tick(tick)
            self._next_tick = tick + 1

    def _tick(self, tick: int) -> None:
        if self._switch_to is not None:
            self._apply_switch()
        self._audio.put(tick, self.audio_queue.pop())
        frame_index = tick - self.lookahead
        if frame_index >= 0:
            self._submit(frame_index)
        speaking = self.speaking
        if speaking != self._speaking:
            self._speaking = speaking
            self.emit("speaking", speaking)
        playing_index = tick - self.delay_frames  # the frame whose playout deadline is this tick's
        chunk = self._audio.get(playing_index)
        playing = chunk is not None and chunk.speech
        if playing != self._playing_speech:
            self._playing_speech = playing
            self.emit("playout", playing, playing_index)

    def _submit(self, frame_index: int, *, urgent: bool = False) -> None:
        base = self.pose.base_index(frame_index)
        self._bases.put(frame_index, (self.compositor, base))
        inputs = RenderInputs(masked_crop=self.assets.masked_crops[base], reference=self.assets.reference,
                              mel=self._mel(frame_index), noise=self.noise)._asdict()
        compositor = self.compositor
        generation = self.generation

        def paste_back(face: np.ndarray) -> VideoOut:
            return VideoOut(compositor.compose_i420(frame_index, base, face), generation, base)

        self.worker.submit(RenderJob(self.session_id, frame_index, generation, self.twin.engine, inputs, paste_back,
                                     self._deliver, self._is_current, urgent=urgent, fail=self._render_failed))

    def _pose_fell_back(self) -> None:
        self.emit("pose_fallback")

    def _is_current(self, generation: int) -> bool:
        return generation == self.generation

    def _mel(self, frame_index: int) -> np.ndarray:
        first = frame_index - self.history
        chunks = [(self._audio.get(i) or SILENCE).features for i in range(first, frame_index + self.lookahead + 1)]
        window = mel_windows(np.concatenate(chunks), np.array([frame_index]), self.mel_spec, first_frame=first)
        return window[0]

    def _deliver(self, frame: RenderedFrame) -> None:
        if frame.generation != self.generation:
            self.dropped_stale += 1
            return
        self._video.put(frame.frame_index, frame.payload)
        now = self.clock.now()
        late = now > self.playout_deadline(frame.frame_index)
        if late:
            self.late_frames += 1
            self.emit("late", frame.frame_index)
        self._deliveries.append(now)
        self._render_ms.append(frame.render_ms)
        self._rendered_in_a_row = 0 if late else self._rendered_in_a_row + 1  # a late frame was not shown
        if self.degraded is not None and self._rendered_in_a_row >= RECOVER_AFTER_FRAMES:
            self.degraded = None
            self.emit("recovered", now - self._degraded_at)

    def _render_failed(self, failure: RenderFailure) -> None:
        if failure.generation != self.generation:
            return  # an interrupted generation: its frames were not wanted anyway
        self.failed_frames += 1
        self._rendered_in_a_row = 0
        self._degrade(f"the engine failed: {failure.error}")

    def _degrade(self, reason: str) -> None:
        """Enter the degraded state (a second fault while degraded keeps the first reason and time)."""
        if self.degraded is None:
            self.degraded = {"reason": reason, "since": round(time.time(), 3)}
            self._degraded_at = self.clock.now()
            self.emit("degraded", reason)

    # --- what the tracks read -------------------------------------------------------------------------------

    def video_i420(self, frame_index: int) -> np.ndarray:
        """The frame to show at ``frame_index``: its render; else, for a frame or two, the latest earlier render
        (counted as repeated); beyond that its un-rendered base frame (counted as idle), so a failing or stalled
        engine leaves the footage loop running, never a frozen picture."""
        self.egress_frames += 1
        if self._first_egress is None:
            self._first_egress = frame_index
        rendered = self._video.get(frame_index)
        if rendered is not None:
            if self._last_video is None or self._last_video[0] < frame_index:
                self._last_video = (frame_index, rendered)
            return rendered.i420
        first_miss = frame_index > self._repeat_counted
        if first_miss:
            self._repeat_counted = frame_index
            self.repeated_frames += 1
        last_shown = self._last_video[0] if self._last_video is not None else self._first_egress - 1
        if self._last_video is not None and frame_index - last_shown < IDLE_AFTER_MISSED_FRAMES:
            return self._last_video[1].i420
        if first_miss:
            self.idle_frames += 1
        if frame_index - last_shown >= STALL_FRAMES:
            self._degrade(f"no frame rendered in time for {(frame_index - last_shown) / self.clock.fps:.1f} s "
                          "(the engine is stalled or too slow)")
        return self._base_i420(frame_index)

    def _base_i420(self, frame_index: int) -> np.ndarray:
        """The un-rendered base frame under ``frame_index`` (the nearest one chosen before it, if it has none)."""
        compositor, base = self._bases.get(frame_index) or (self.compositor, None)
        if base is None:  # (after a switch, the nearest frame chosen before it may be of the other twin)
            base = self._idle[1] if self._idle is not None else self.pose.describe()["base_index"]
            base = min(base, compositor.assets.base_count - 1)
        if self._idle is None or self._idle[:2] != (frame_index, base):
            self._idle = (frame_index, base, compositor.base_i420(frame_index, base))
        return self._idle[2]

    def audio_block(self, block_index: int, blocks_per_frame: int = 2) -> np.ndarray:
        """The int16 samples of 20 ms audio block ``block_index`` (two per video frame)."""
        chunk = self._audio.get(block_index // blocks_per_frame) or SILENCE
        size = PLAYBACK_SAMPLES_PER_FRAME // blocks_per_frame
        start = (block_index % blocks_per_frame) * size
        block = chunk.playback[start : start + size]
        return np.round(np.clip(block, -1.0, 1.0) * 32767.0).astype(np.int16)

    # --- switching twins -------------------------------------------------------------------------------------

    def switch_twin(self, twin: Twin, noise: np.ndarray, compositor: Compositor) -> None:
        """Show ``twin`` from the next tick on, without a gap: frames submitted from then on are rendered by its
        engine over its base loop (``noise`` has its engine's shape) and composed by ``compositor``, which makes
        frames of this session's size; frames already submitted play out as rendered, so the new twin is on
        screen within the render lead. The audio, the clock and the video track go on as they were.

        Raises:
            InputError: the twin's audio features (or frame rate) differ from this session's, or ``compositor``
                makes frames of another size.
        """
        if twin is self.twin:  # back to the twin on screen before a pending switch took effect
            self._switch_to = None
            return
        if twin.mel_spec != self.mel_spec:
            raise InputError(f"twin {twin.name!r} hears audio as {twin.mel_spec}, not as this session's twin "
                             f"{self.twin.name!r} ({self.mel_spec}); start a new session for it")
        if compositor.frame_size != self.frame_size:
            raise InputError(f"the compositor for twin {twin.name!r} makes {compositor.frame_size} frames; this "
                             f"session streams {self.frame_size}")
        self._switch_to = TwinSwitch(twin, noise, compositor)

    def _apply_switch(self) -> None:
        switch, self._switch_to = self._switch_to, None
        assert switch is not None
        previous = self.twin
        self.twin, self.assets, self.noise, self.compositor = switch.twin, switch.twin.assets, switch.noise, \
            switch.compositor
        self.pose = self.pose.for_base_poses(switch.twin.assets.base_poses)
        self.worker.detach(previous.engine)  # the worker waits for one job per session of an engine to batch
        self.worker.attach(switch.twin.engine)
        self.emit("twin_switched", previous.name, switch.twin.name)

    # --- audio inputs ----------------------------------------------------------------------------------------

    async def say(self, text: str) -> dict[str, Any]:
        """Speak ``text`` after whatever is queued: the first sentence is synthesised before this returns (so
        errors surface here), the rest in a background task that stops if the speech is interrupted.

        A text-to-speech failure is announced (``speech_failed``) wherever it happens; in the request it is
        raised too, in the background it ends that text (what was queued before it still plays).

        Raises:
            DependencyError: the TTS backend is missing.
            ToolError: the TTS backend failed.
            PayloadTooLargeError: the first sentence does not fit in the speech queue.
        """
        generation = self.generation
        sentences = split_sentences(text)
        try:
            first = await self.tts.synthesize(sentences[0])
        except TTS_FAILURES as exc:
            self.emit("speech_failed", f"text to speech failed: {exc}")
            raise
        frames = await self.queue_speech(first)
        if len(sentences) > 1:
            self._spawn(self._say_rest(sentences, generation), f"say-{self.session_id}")
        return {"queued_s": round(frames / self.clock.fps, 3), "sentences": len(sentences),
                "generation": self.generation,
                "starts_in_s": round((len(self.audio_queue) - frames + self.delay_frames) / self.clock.fps, 3)}

    async def _say_rest(self, sentences: list[str], generation: int) -> None:
        """Synthesise and queue sentences 2…n of a ``say`` (the first is queued), announcing a failure."""
        spoken = 1

        async def enqueue(speech: Speech) -> bool:
            nonlocal spoken
            if self.generation != generation:
                return False
            await self.queue_speech(speech)
            spoken += 1
            return True

        try:
            await speak_sentences(self.tts, sentences[1:], enqueue)
        except TTS_FAILURES as exc:
            self.emit("speech_failed", f"text to speech failed at sentence {spoken + 1} of {len(sentences)} "
                                       f"({spoken} queued, the rest dropped): {exc}")
        except PayloadTooLargeError as exc:
            self.emit("speech_failed", f"sentence {spoken + 1} of {len(sentences)} does not fit in the speech "
                                       f"queue ({spoken} queued, the rest dropped): {exc}")

    async def queue_speech(self, speech: Speech) -> int:
        """Resample a whole utterance off the loop and queue it; returns the frames it fills."""
        if speech.samples.size == 0:
            raise UnprocessableError("the audio holds no samples")
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(None, prepare_chunks, speech.samples, speech.sample_rate_hz)
        return self.audio_queue.extend(chunks)

    def queue_stream(self, chunks: list[AudioChunk], *, live: bool) -> int:
        """Queue chunks from a streaming input (agent push, microphone); returns frames queued.

        Live (microphone) chunks keep latency bounded by dropping the oldest live audio (never queued speech; see
        ``AudioQueue.extend_live``); pushed chunks are kept whole and refused only beyond the queue's limit.
        """
        if live:
            dropped = self.audio_queue.extend_live(chunks)
            if dropped:
                self.emit("live_dropped", dropped)
            return len(chunks)
        try:
            return self.audio_queue.extend(chunks)
        except PayloadTooLargeError:
            log.warning("session %s: pushed audio over the queue limit; %d frames dropped", self.session_id,
                        len(chunks))
            raise

    # --- control ---------------------------------------------------------------------------------------------

    def interrupt(self) -> dict[str, Any]:
        """Barge-in: drop queued speech and every not-yet-played frame of the current generation.

        The audio of frames not yet played becomes silence at once, every remembered chunk stops feeding the
        mel windows (so the mouth closes without the tail of the old speech), and the unplayed frames are
        re-rendered under a new generation; stale in-flight renders are discarded by the worker. The first
        unplayed frame, due within a frame period, is rendered urgently (alone, ahead of every queued job), so
        the closed mouth is on screen before the rest of the re-renders are done.
        """
        self.generation += 1
        self.interrupts += 1
        dropped = self.audio_queue.clear()
        first_unplayed = self.playout_index() + 1
        for index in self._audio.keys():
            chunk = self._audio.get(index)
            if chunk is None or not chunk.speech:
                continue
            if index >= first_unplayed:
                self._audio.put(index, SILENCE)
            else:
                self._audio.put(index, replace(chunk, features=SILENCE.features, speech=False))
        self._video.discard_from(first_unplayed)
        for frame_index in range(max(0, first_unplayed), self._next_tick - self.lookahead):
            self._submit(frame_index, urgent=frame_index == max(0, first_unplayed))
        self.last_interrupt = {"at": self.clock.now(), "first_silent_frame": float(first_unplayed)}
        self.emit("interrupted", first_unplayed, dropped)
        return {"generation": self.generation, "dropped_s": round(dropped / self.clock.fps, 3)}

    # --- reporting -------------------------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """Whether speech is playing now or queued."""
        chunk = self._audio.get(self.playout_index())
        return bool(len(self.audio_queue)) or (chunk is not None and chunk.speech)

    def stats(self) -> TimelineStats:
        """The timeline's figures for ``/api/stats`` (its channel adds viewers, inputs and outputs)."""
        now = self.clock.now()
        recent = [t for t in self._deliveries if now - t <= 2.0]
        span = (now - recent[0]) if len(recent) > 1 else 0.0
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        render = list(self._render_ms)
        p50, p99 = (float(np.percentile(render, q)) for q in (50, 99)) if render else (math.nan, math.nan)
        compose_p50, compose_p99 = self.compositor.timing()
        return {
            "session": self.session_id,
            "twin": self.twin.name,
            "fps": round(fps, 2),
            "render_ms_p50": round(p50, 2) if render else None,
            "render_ms_p99": round(p99, 2) if render else None,
            "compose_ms_p50": compose_p50,
            "compose_ms_p99": compose_p99,
            "late_frames": self.late_frames,
            "repeated_frames": self.repeated_frames,
            "idle_frames": self.idle_frames,
            "failed_frames": self.failed_frames,
            "degraded": self.degraded,
            "stale_frames": self.dropped_stale,
            "speaking": self.speaking,
            "generation": self.generation,
            "interrupts": self.interrupts,
            "frame_index": max(0, self.playout_index()),
            "audio_to_frame_ms": round(1000 * self.delay_frames / self.clock.fps, 1),
            "queue": {"speech_frames": len(self.audio_queue), "render_jobs": self.worker.depth,
                      "live_frames_dropped": self.audio_queue.dropped_live},
            "pose": self.pose.describe(),
            "frame_size": list(self.frame_size),
            "egress_frames": self.egress_frames,
        }

