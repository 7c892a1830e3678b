"""The live loop on a hand-driven clock, with a tiny renderer built in the test on the real render worker thread
(unit tier: no CLI chain, no server)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from avatar.audio import MelSpec
from avatar.speech import Voice
from engines.base import Engine
from stream.audio_queue import prepare_chunks
from stream.render_worker import RenderJob, RenderWorker
from stream.session import TwinSession
from stream.tracks import TwinAudioTrack, TwinVideoTrack
from stream.tts import EspeakTTS
from tests.stream.manual_clock import ManualTime
from tests.stream.tiny_twin import TinyRenderer, tiny_twin


class RecordingEngine:
    """Delegates to a real engine and remembers how loud each rendered frame's own 40 ms was in its window."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.loudness: list[float] = []
        centres = MelSpec().centres()
        self.own = np.flatnonzero(np.abs(centres + 0.0) < 320)  # STFT frames centred inside the video frame

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.loudness.extend(float(window[:, self.own].max()) for window in inputs["mel"])
        return self.engine(inputs)


async def _run_session() -> dict[str, object]:
    recorder = RecordingEngine(TinyRenderer())  # type: ignore[arg-type]
    worker = RenderWorker({"tiny": recorder}, asyncio.get_running_loop(), max_batch=4)  # type: ignore[dict-item]
    worker.start()
    manual = ManualTime()
    clock = manual.clock()
    noise = np.zeros((3, 64, 64), np.float32)
    spawned: list[asyncio.Task[Any]] = []

    def spawn(coroutine: Any, name: str) -> asyncio.Task[Any]:
        spawned.append(asyncio.ensure_future(coroutine))
        return spawned[-1]

    session = TwinSession("s", tiny_twin(), worker, clock, tts=EspeakTTS(Voice()), pose_mode="still", lead_frames=2,
                          noise=noise, max_queued_frames=500, spawn=spawn)
    producer = asyncio.ensure_future(session.run())
    video_frames: list[Any] = []
    audio_frames: list[Any] = []

    async def consume(track: TwinVideoTrack | TwinAudioTrack, sink: list[Any]) -> None:
        while True:
            sink.append(await track.recv())

    consumers: list[asyncio.Future[None]] = []
    burst = np.zeros(22050, np.float32)
    burst[5000:12000] = np.sin(np.arange(7000) * 0.2) * 0.5  # 0.23-0.54 s into the utterance
    try:
        for step in range(60):
            if step == 10:
                session.audio_queue.extend(prepare_chunks(burst, 22050))
            if step == session.delay_frames + 1:
                consumers = [asyncio.ensure_future(consume(TwinVideoTrack(session), video_frames)),
                             asyncio.ensure_future(consume(TwinAudioTrack(session), audio_frames))]
            for offset in (0.0, 0.02):  # the frame deadline, then the second 20 ms audio block
                manual.advance_to(clock.deadline(step) + offset)
                for _ in range(5):
                    await asyncio.sleep(0)
                _wait_for_renders(worker)
                for _ in range(5):
                    await asyncio.sleep(0)
        stats = session.stats()
        received_video, received_audio = list(video_frames), list(audio_frames)
        session.audio_queue.extend(prepare_chunks(burst, 22050))
        manual.advance_to(clock.deadline(61))
        await asyncio.sleep(0)
        before = session.generation
        result = session.interrupt()
        after_interrupt = [session.audio_block(k) for k in range(2 * (session.playout_index() + 1),
                                                                  2 * (session._next_tick + 1))]
    finally:
        for task in (producer, *consumers):
            task.cancel()
        worker.stop()
    pts = [frame.pts for frame in received_video]
    audio_pts = [frame.pts for frame in received_audio]
    loud_blocks = [frame.pts // 960 for frame in received_audio if np.abs(frame.to_ndarray()).max() > 1000]
    return {"pts": pts, "audio_pts": audio_pts, "loud_blocks": loud_blocks, "stats": stats,
            "loudness": recorder.loudness, "generation": (before, result["generation"]),
            "after_interrupt": after_interrupt, "queue_after": len(session.audio_queue),
            "delay": session.delay_frames}


def _wait_for_renders(worker: RenderWorker) -> None:
    deadline = time.monotonic() + 10
    while worker.depth and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.03)


def test_live_loop_paces_locks_audio_to_video_and_interrupts() -> None:
    out = asyncio.run(_run_session())
    pts = out["pts"]
    assert isinstance(pts, list) and len(pts) > 40
    assert all(b - a == 3600 for a, b in zip(pts, pts[1:], strict=False))  # one frame per 40 ms, no gaps
    audio_pts = out["audio_pts"]
    assert isinstance(audio_pts, list)
    assert all(b - a == 960 for a, b in zip(audio_pts, audio_pts[1:], strict=False))
    assert audio_pts[0] * 90_000 == pts[0] * 48_000  # audio and video start at the same media time
    # The burst entered the timeline at tick 10, 0.23-0.54 s into the utterance: its audio is frames 15-24 ...
    loud_frames = sorted({block // 2 for block in out["loud_blocks"]})  # type: ignore[attr-defined]
    assert loud_frames and 14 <= loud_frames[0] <= 17 and loud_frames[-1] <= 25
    # ... and exactly those frames (± the half FFT that spills into a neighbour) were rendered from mel windows
    # whose own 40 ms hold the burst: the audio a viewer hears with frame n is the audio frame n was drawn from.
    loudness = np.array(out["loudness"])
    loud_renders = np.flatnonzero(loudness > 0.0)
    nearby = set(range(loud_frames[0] - 1, loud_frames[-1] + 2))
    assert set(loud_frames) <= set(loud_renders.tolist()) <= nearby
    stats = out["stats"]
    assert isinstance(stats, dict) and stats["repeated_frames"] <= 2 and stats["generation"] == 0
    before, after = out["generation"]  # type: ignore[misc]
    assert after == before + 1 and out["queue_after"] == 0
    assert all(np.abs(block).max() == 0 for block in out["after_interrupt"])  # type: ignore[attr-defined]


def test_worker_waits_briefly_for_the_other_sessions_of_a_tick() -> None:
    batches: list[int] = []

    def double(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        batches.append(len(inputs["x"]))
        return inputs["x"] * 2

    async def tick(feeds: int) -> list[float]:
        loop = asyncio.get_running_loop()
        worker = RenderWorker({"e": double}, loop, max_batch=8, gather_s=0.2)  # type: ignore[dict-item]
        for _ in range(feeds):
            worker.attach("e")
        worker.start()
        got: list[float] = []
        done = asyncio.Event()

        def deliver(frame: Any) -> None:
            got.append(float(frame.payload[0]))
            if len(got) == 2:
                done.set()

        def job(value: float) -> RenderJob:
            return RenderJob("s", 0, 0, "e", {"x": np.array([value], np.float32)}, lambda face: face, deliver,
                             lambda generation: True)

        try:
            worker.submit(job(1.0))
            await asyncio.sleep(0.02)  # the second session's job arrives 20 ms later
            worker.submit(job(2.0))
            await asyncio.wait_for(done.wait(), 5)
        finally:
            worker.stop()
        return got

    assert asyncio.run(tick(feeds=2)) == [2.0, 4.0] and batches == [2]  # waited, then one call for both
    batches.clear()
    assert asyncio.run(tick(feeds=1)) == [2.0, 4.0] and batches == [1, 1]  # one session: never waits


def test_an_urgent_job_is_rendered_alone_before_everything_queued() -> None:
    calls: list[list[float]] = []
    entered, gate = threading.Event(), threading.Event()

    def engine(inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        entered.set()
        gate.wait(5)
        calls.append([float(v) for v in inputs["x"]])
        return inputs["x"]

    async def run() -> list[float]:
        worker = RenderWorker({"e": engine}, asyncio.get_running_loop(), max_batch=8)  # type: ignore[dict-item]
        for _ in range(4):
            worker.attach("e")
        delivered: list[float] = []
        done = asyncio.Event()

        def deliver(frame: Any) -> None:
            delivered.append(float(frame.payload))
            if len(delivered) == 5:
                done.set()

        def job(value: float, *, urgent: bool = False) -> RenderJob:
            return RenderJob("s", int(value), 0, "e", {"x": np.array(value, np.float32)}, lambda face: face,
                             deliver, lambda generation: True, urgent=urgent)

        worker.start()
        try:
            worker.submit(job(1.0))  # taken at once; the engine holds it (an old generation's batch in flight)
            assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 5)
            for value in (2.0, 3.0):
                worker.submit(job(value))
            worker.submit(job(9.0, urgent=True))
            worker.submit(job(4.0))
            assert [entry[1] for entry in worker.pending()] == [9, 2, 3, 4]
            gate.set()
            await asyncio.wait_for(done.wait(), 5)
        finally:
            worker.stop()
        return delivered

    delivered = asyncio.run(run())
    assert delivered == [1.0, 9.0, 2.0, 3.0, 4.0]
    assert calls == [[1.0], [9.0], [2.0, 3.0, 4.0]]  # the urgent frame did not wait to fill a batch


def _queued_session(pose_mode: str) -> tuple[TwinSession, RenderWorker, ManualTime]:
    """A tiny session on a hand-driven clock whose render worker never starts, so its jobs stay queued."""
    worker = RenderWorker({}, asyncio.get_running_loop(), max_batch=4)
    manual = ManualTime()
    session = TwinSession("s", tiny_twin(), worker, manual.clock(), tts=EspeakTTS(Voice()), pose_mode=pose_mode,
                          lead_frames=2, noise=np.zeros((3, 64, 64), np.float32), max_queued_frames=500,
                          spawn=lambda coroutine, name: asyncio.ensure_future(coroutine))
    return session, worker, manual


def test_interrupt_re_renders_the_next_frame_to_play_first_and_alone() -> None:
    async def run() -> tuple[int, list[tuple[str, int, int, bool]]]:
        session, worker, manual = _queued_session("still")
        clock = session.clock
        session.audio_queue.extend(prepare_chunks(0.3 * np.sin(np.arange(48000) * 0.05).astype(np.float32), 48000))
        producer = asyncio.ensure_future(session.run())
        try:
            for step in range(12):
                manual.advance_to(clock.deadline(step))
                for _ in range(3):
                    await asyncio.sleep(0)
            session.interrupt()
            return session.playout_index() + 1, worker.pending()
        finally:
            producer.cancel()

    first_unplayed, pending = asyncio.run(run())
    renewed = [entry for entry in pending if entry[2] == 1]
    assert len(renewed) >= 2  # the unplayed frames are all re-rendered under the new generation ...
    assert pending[0] == ("s", first_unplayed, 1, True)  # ... the next to play first, urgently ...
    assert [entry[3] for entry in renewed[1:]] == [False] * (len(renewed) - 1)  # ... and only that one
    assert [entry[1] for entry in renewed] == list(range(first_unplayed, first_unplayed + len(renewed)))


def test_a_session_announces_speech_and_a_lost_webcam_on_its_own_clock() -> None:
    async def run() -> list[tuple[float, str, object]]:
        session, _, manual = _queued_session("loop")
        clock = session.clock
        heard: list[tuple[float, str, object]] = []
        session.on("speaking", lambda on: heard.append((clock.now(), "speaking", on)))
        session.on("pose_fallback", lambda: heard.append((clock.now(), "pose_fallback", None)))
        producer = asyncio.ensure_future(session.run())
        try:
            for step in range(80):
                if step == 5:
                    session.audio_queue.extend(prepare_chunks(np.full(9600, 0.2, np.float32), 48000))  # 0.2 s
                    session.pose.webcam((0.0, 0.0, 0.0))  # one webcam pose, then the webcam goes quiet
                manual.advance_to(clock.deadline(step))
                for _ in range(3):
                    await asyncio.sleep(0)
        finally:
            producer.cancel()
        return heard

    start = ManualTime().t
    heard = asyncio.run(run())
    assert [(kind, value) for _, kind, value in heard] == [("speaking", True), ("speaking", False),
                                                           ("pose_fallback", None)]
    speech_on, speech_off, fallback = (at - start for at, _, _ in heard)
    # 5 frames of speech: speaking from the moment it is queued until it has played out, 3 frames of delay later
    assert 0.2 <= speech_on <= 0.24 and 0.3 <= speech_off - speech_on <= 0.36
    assert 1.2 <= fallback <= 1.3  # one second of the session's clock after the last webcam pose


def test_audio_catches_up_after_a_short_delay_and_skips_only_a_stall() -> None:
    async def run() -> list[int]:
        session, _, manual = _queued_session("still")
        clock = session.clock
        producer = asyncio.ensure_future(session.run())
        track = TwinAudioTrack(session)
        blocks: list[int] = []

        async def receive(count: int) -> None:
            for _ in range(count):
                receiving = asyncio.ensure_future(track.recv())
                for _ in range(5):
                    await asyncio.sleep(0)
                while not receiving.done():  # waiting for its deadline: move the clock on, 10 ms at a time
                    manual.advance_to(manual.t + 0.01)
                    for _ in range(5):
                        await asyncio.sleep(0)
                blocks.append(receiving.result().pts // 960)

        try:
            manual.advance_to(clock.deadline(10))
            await receive(4)
            manual.advance_to(manual.t + 0.1)  # the loop was busy for 100 ms: five blocks are due at once
            await receive(8)
            manual.advance_to(manual.t + 1.0)  # a stall of a second: catching up would keep latency high
            await receive(2)
        finally:
            producer.cancel()
        return blocks

    blocks = asyncio.run(run())
    assert blocks[:12] == list(range(blocks[0], blocks[0] + 12))  # the late blocks were sent, none skipped
    assert blocks[13] == blocks[12] + 1 and blocks[12] - blocks[11] > 40  # the stall skipped ahead, then on
