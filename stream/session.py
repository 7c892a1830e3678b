"""One live twin: its clock, its audio, its pose, and the frames rendered for it.

Timeline (DESIGN, "The live loop"): on producer tick *j* (at clock deadline *j*) the next queued audio chunk
becomes frame *j*'s audio, and frame *n = j − K* is submitted for rendering, K being the mel window's
look-ahead in frames. Frame *n* plays out at deadline *n + K + L*, L frames of render lead later, with its own
audio: audio and video are locked by construction.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

from avatar.audio import PLAYBACK_SAMPLES_PER_FRAME, MelSpec, mel_windows
from avatar.speech import Voice, synthesize_async
from stream.assets import TwinAssets
from stream.audio_queue import SILENCE, AudioChunk, AudioQueue, prepare_chunks
from stream.clock import MediaClock
from stream.pose import PoseDriver
from stream.render_worker import RenderedFrame, RenderJob, RenderWorker

log = logging.getLogger(__name__)
T = TypeVar("T")


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

    def discard_from(self, index: int) -> None:
        """Forget every entry at or after ``index``."""
        for slot, key in enumerate(self._keys):
            if key is not None and key >= index:
                self._keys[slot] = None
                self._items[slot] = None


@dataclass(frozen=True)
class VideoOut:
    """A frame ready for the video tracks: planar yuv420p and the base frame it was rendered over."""

    i420: np.ndarray
    generation: int


class TwinSession:
    """A live twin session, driven by ``run()`` on the event loop."""

    def __init__(self, session_id: str, assets: TwinAssets, worker: RenderWorker, clock: MediaClock, *,
                 mel_spec: MelSpec, pose: PoseDriver, lead_frames: int, noise: np.ndarray,
                 max_queued_frames: int, voice: Voice) -> None:
        self.session_id = session_id
        self.assets = assets
        self.worker = worker
        self.clock = clock
        self.mel_spec = mel_spec
        self.pose = pose
        self.voice = voice
        self.context = mel_spec.context_frames
        self.lead = lead_frames
        self.noise = noise
        self.generation = 0
        self.audio_queue = AudioQueue(max_queued_frames)
        ring = 4 * (2 * self.context + self.lead) + 16
        self._audio = FrameRing[AudioChunk](ring)
        self._video = FrameRing[VideoOut](ring)
        self._next_tick = 0
        self._idle_i420 = assets.base_i420(pose.base_index(0))
        self._last_video: tuple[int, VideoOut] | None = None
        self._repeat_counted = -1
        self.viewers = 0
        self.late_frames = 0
        self.repeated_frames = 0
        self.dropped_stale = 0
        self.interrupts = 0
        self._deliveries: deque[float] = deque(maxlen=200)
        self._render_ms: deque[float] = deque(maxlen=500)

    # --- timeline -------------------------------------------------------------------------------------------

    @property
    def delay_frames(self) -> int:
        """Frames between an audio chunk entering the timeline and its playout."""
        return self.context + self.lead

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
        self._audio.put(tick, self.audio_queue.pop())
        frame_index = tick - self.context
        if frame_index >= 0:
            self._submit(frame_index)

    def _submit(self, frame_index: int) -> None:
        base = self.pose.base_index(frame_index)
        inputs = {
            "masked_crop": self.assets.masked_crops[base],
            "reference": self.assets.reference,
            "mel": self._mel(frame_index),
            "noise": self.noise,
        }
        assets = self.assets
        generation = self.generation

        def finish(face: np.ndarray) -> VideoOut:
            return VideoOut(assets.compose_i420(base, face), generation)

        self.worker.submit(RenderJob(self.session_id, frame_index, generation, inputs, finish, self._deliver,
                                     self._is_current))

    def _is_current(self, generation: int) -> bool:
        return generation == self.generation

    def _mel(self, frame_index: int) -> np.ndarray:
        first = frame_index - self.context
        chunks = [(self._audio.get(i) or SILENCE).features for i in range(first, frame_index + self.context + 1)]
        window = mel_windows(np.concatenate(chunks), np.array([frame_index]), self.mel_spec, first_frame=first)
        return window[0]

    def _deliver(self, frame: RenderedFrame) -> None:
        if frame.generation != self.generation:
            self.dropped_stale += 1
            return
        self._video.put(frame.frame_index, frame.payload)
        now = self.clock.now()
        if now > self.playout_deadline(frame.frame_index):
            self.late_frames += 1
        self._deliveries.append(now)
        self._render_ms.append(frame.render_ms)

    # --- what the tracks read -------------------------------------------------------------------------------

    def video_i420(self, frame_index: int) -> np.ndarray:
        """The frame to show at ``frame_index``: its render, else the latest earlier one (counted as repeated)."""
        rendered = self._video.get(frame_index)
        if rendered is not None:
            if self._last_video is None or self._last_video[0] < frame_index:
                self._last_video = (frame_index, rendered)
            return rendered.i420
        if frame_index > self._repeat_counted:
            self._repeat_counted = frame_index
            self.repeated_frames += 1
        return self._last_video[1].i420 if self._last_video is not None else self._idle_i420

    def audio_block(self, block_index: int, blocks_per_frame: int = 2) -> np.ndarray:
        """The int16 samples of 20 ms audio block ``block_index`` (two per video frame)."""
        chunk = self._audio.get(block_index // blocks_per_frame) or SILENCE
        size = PLAYBACK_SAMPLES_PER_FRAME // blocks_per_frame
        start = (block_index % blocks_per_frame) * size
        block = chunk.playback[start : start + size]
        return np.round(np.clip(block, -1.0, 1.0) * 32767.0).astype(np.int16)

    # --- control ---------------------------------------------------------------------------------------------

    async def say(self, text: str) -> dict[str, Any]:
        """Synthesise ``text`` and queue it after whatever is queued; returns what was queued."""
        speech = await synthesize_async(text, self.voice)
        loop = asyncio.get_running_loop()
        chunks = await loop.run_in_executor(None, prepare_chunks, speech.samples, speech.sample_rate_hz)
        frames = self.audio_queue.extend(chunks)
        return {"queued_s": round(frames / self.clock.fps, 3), "generation": self.generation,
                "starts_in_s": round((len(self.audio_queue) - frames + self.delay_frames) / self.clock.fps, 3)}

    def interrupt(self) -> dict[str, Any]:
        """Barge-in: drop queued speech and every not-yet-played frame of the current generation.

        The audio of frames not yet played becomes silence at once, and those frames are re-rendered (with
        a closed mouth) under a new generation; stale in-flight renders are discarded by the worker.
        """
        self.generation += 1
        self.interrupts += 1
        dropped = self.audio_queue.clear()
        first_unplayed = self.playout_index() + 1
        for index in range(first_unplayed, self._next_tick):
            if (chunk := self._audio.get(index)) is not None and chunk.speech:
                self._audio.put(index, SILENCE)
        self._video.discard_from(first_unplayed)
        for frame_index in range(first_unplayed, self._next_tick - self.context):
            self._submit(frame_index)
        return {"generation": self.generation, "dropped_s": round(dropped / self.clock.fps, 3)}

    # --- reporting -------------------------------------------------------------------------------------------

    @property
    def speaking(self) -> bool:
        """Whether speech is playing now or queued."""
        chunk = self._audio.get(self.playout_index())
        return bool(len(self.audio_queue)) or (chunk is not None and chunk.speech)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot for ``/api/stats``."""
        now = self.clock.now()
        recent = [t for t in self._deliveries if now - t <= 2.0]
        span = (now - recent[0]) if len(recent) > 1 else 0.0
        fps = (len(recent) - 1) / span if span > 0 else 0.0
        render = list(self._render_ms)
        p50, p99 = (float(np.percentile(render, q)) for q in (50, 99)) if render else (math.nan, math.nan)
        return {
            "session": self.session_id,
            "fps": round(fps, 2),
            "render_ms_p50": round(p50, 2) if render else None,
            "render_ms_p99": round(p99, 2) if render else None,
            "late_frames": self.late_frames,
            "repeated_frames": self.repeated_frames,
            "stale_frames": self.dropped_stale,
            "viewers": self.viewers,
            "speaking": self.speaking,
            "generation": self.generation,
            "interrupts": self.interrupts,
            "frame_index": max(0, self.playout_index()),
            "audio_to_frame_ms": round(1000 * self.delay_frames / self.clock.fps, 1),
            "queue": {"speech_frames": len(self.audio_queue), "render_jobs": self.worker.depth},
            "frame_size": list(self.assets.frame_size),
        }
