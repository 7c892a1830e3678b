"""The render worker: one thread per process owns the engines and batches frames of all sessions per call.

Jobs are submitted from the event loop without blocking it; results come back on the loop through
``call_soon_threadsafe``. Each engine call takes the oldest job and every other queued job for the same engine
(up to ``max_batch``), so sessions of one twin share calls. Sessions tick on one frame grid, so their jobs
arrive within a fraction of a millisecond of each other; when fewer jobs are queued than sessions feed that
engine (``attach``/``detach`` keep that count), the worker waits up to ``gather_s`` after the oldest job for the
rest. After the engine call each job's ``paste_back`` runs here too, off the event loop. Jobs of a superseded generation
(after an interrupt) are dropped before rendering. An urgent job (the first frame re-rendered after an interrupt,
whose deadline is one frame away) goes to the front of the queue and is rendered in a call of its own, without
waiting for other jobs: the closed mouth does not wait for a batch.

Each batch's stages are timed into bounded deques (the last ``TIMED_BATCHES``): the wait between its oldest job's
submission and the worker taking it (``queue_wait_ms``; the gather wait is part of it), stacking the inputs
(``stack_ms``), the engine call (``render_ms``) and the paste-backs with their hand-over to the loop (``paste_ms``).
``stats`` reports the p50 and p99 of each, which tells where a batch's time goes when the whole server runs
(the event loop, compositing and encoding share the interpreter with this thread).

When an engine call raises, the batch's frames are lost, not the stream: each job's session is told
(``RenderJob.fail`` with a ``RenderFailure``, on the loop) and shows the idle footage loop instead, and the
worker goes on with the next batch. The failure is logged with its traceback at most once per
``FAILURE_LOG_EVERY_S`` (a broken engine fails 25 times a second), and once more when the engine renders again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engines.base import Engine
from stream.stats import WorkerStats

log = logging.getLogger(__name__)
FAILURE_LOG_EVERY_S = 10.0
MAX_ERROR_CHARS = 300  # an engine's message (ONNX Runtime quotes whole nodes) as shown to the operator
TIMED_BATCHES = 500  # the stage timings and batch sizes kept (the most recent batches)


@dataclass(frozen=True)
class RenderJob:
    """One frame to render for one session."""

    session_id: str
    frame_index: int
    generation: int
    engine: str  # key of the engine that renders it
    inputs: dict[str, np.ndarray]  # each without the batch axis
    paste_back: Callable[[np.ndarray], Any]  # on the worker thread: the rendered face pasted into its frame
    deliver: Callable[[RenderedFrame], None]  # runs on the event loop
    is_current: Callable[[int], bool]  # whether a generation is still wanted
    urgent: bool = False  # rendered next, alone, ahead of every queued job
    fail: Callable[[RenderFailure], None] | None = None  # runs on the event loop when the engine call failed
    submitted_at: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class RenderedFrame:
    """A finished frame, as handed back to its session."""

    session_id: str
    frame_index: int
    generation: int
    payload: Any
    render_ms: float
    batch: int


@dataclass(frozen=True)
class RenderFailure:
    """A frame the engine failed to render, as handed back to its session."""

    session_id: str
    frame_index: int
    generation: int
    error: str  # the engine's exception, "Type: message", at most MAX_ERROR_CHARS


class RenderWorker:
    """Owns the engines on one thread; batches up to ``max_batch`` queued jobs per engine call.

    The job queue holds at most ``max_jobs``; overflow rule: the oldest job is dropped (its frame would be
    late anyway) and counted in ``dropped``; an urgent job enters at the front, so on a full queue it pushes
    out the newest job instead. ``gather_s`` bounds the wait for the other sessions' jobs of one
    tick (see ``feeds``).
    """

    def __init__(self, engines: dict[str, Engine], loop: asyncio.AbstractEventLoop, *, max_batch: int,
                 max_jobs: int = 256, gather_s: float = 0.004) -> None:
        self.engines = engines
        self.max_batch = max_batch
        self.gather_s = gather_s
        self._feeds: Counter[str] = Counter()  # engine key → sessions that submit a job to it every tick
        self._failing: Counter[str] = Counter()  # engine key → batches failed since its last good call
        self._failure_logged_at = -FAILURE_LOG_EVERY_S
        self._loop = loop
        self._jobs: deque[RenderJob] = deque(maxlen=max_jobs)
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="twincast-render", daemon=True)
        self.dropped = 0
        self.stale = 0
        self.failures = 0
        self.calls = 0
        self.render_ms: deque[float] = deque(maxlen=TIMED_BATCHES)  # the engine calls
        self.queue_wait_ms: deque[float] = deque(maxlen=TIMED_BATCHES)  # oldest job submitted → batch taken
        self.stack_ms: deque[float] = deque(maxlen=TIMED_BATCHES)  # the inputs stacked into the batch
        self.paste_ms: deque[float] = deque(maxlen=TIMED_BATCHES)  # the batch's paste-backs, handed to the loop
        self.batch_sizes: deque[int] = deque(maxlen=TIMED_BATCHES)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to finish its current batch and exit, then wait for it."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def attach(self, engine: str) -> None:
        """A session now submits one job per tick to ``engine``."""
        with self._wake:
            self._feeds[engine] += 1

    def detach(self, engine: str) -> None:
        """A session of ``engine`` stopped."""
        with self._wake:
            self._feeds[engine] -= 1

    @property
    def depth(self) -> int:
        """Jobs waiting."""
        return len(self._jobs)

    def submit(self, job: RenderJob) -> None:
        """Queue a job (never blocks); an urgent one at the front."""
        with self._wake:
            if len(self._jobs) == self._jobs.maxlen:
                self.dropped += 1
            if job.urgent:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            self._wake.notify()

    def stats(self) -> WorkerStats:
        """Engine calls, jobs dropped on overflow and as stale, failed batches, the recent mean batch size, and the
        p50/p99 of each stage of the recent batches (None before the first)."""
        sizes = list(self.batch_sizes)
        queue_wait, stack, engine, paste = (percentiles(self.queue_wait_ms), percentiles(self.stack_ms),
                                            percentiles(self.render_ms), percentiles(self.paste_ms))
        return {"calls": self.calls, "dropped_jobs": self.dropped, "stale_jobs": self.stale,
                "failures": self.failures, "mean_batch": round(float(np.mean(sizes)), 2) if sizes else None,
                "queue_wait_ms_p50": queue_wait[0], "queue_wait_ms_p99": queue_wait[1],
                "stack_ms_p50": stack[0], "stack_ms_p99": stack[1],
                "engine_ms_p50": engine[0], "engine_ms_p99": engine[1],
                "paste_ms_p50": paste[0], "paste_ms_p99": paste[1]}

    def pending(self) -> list[tuple[str, int, int, bool]]:
        """The queued jobs in the order they will be taken: (session, frame index, generation, urgent)."""
        with self._wake:
            return [(job.session_id, job.frame_index, job.generation, job.urgent) for job in self._jobs]

    def _take(self) -> list[RenderJob] | None:
        with self._wake:
            while not self._jobs and not self._stopping:
                self._wake.wait()
            if self._stopping:
                return None
            if self._jobs[0].urgent:
                return [self._jobs.popleft()]
            key = self._jobs[0].engine
            wanted = min(self.max_batch, max(1, self._feeds[key]))
            until = self._jobs[0].submitted_at + self.gather_s
            while (not self._stopping and sum(job.engine == key for job in self._jobs) < wanted
                   and (left := until - time.perf_counter()) > 0):
                self._wake.wait(left)
            if self._stopping:
                return None
            batch = [job for job in self._jobs if job.engine == key][: self.max_batch]
            for job in batch:
                self._jobs.remove(job)
            return batch

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            self.queue_wait_ms.append(1000 * (time.perf_counter() - min(job.submitted_at for job in jobs)))
            current = [job for job in jobs if job.is_current(job.generation)]
            self.stale += len(jobs) - len(current)
            if not current:
                continue
            try:
                self._render(current)
            except Exception as exc:  # any engine error: one failed batch must not stop the stream
                self._failed(current, exc)

    def _failed(self, jobs: list[RenderJob], exc: Exception) -> None:
        """Count a failed batch, log it at a bounded rate, and tell each job's session (on the loop)."""
        key = jobs[0].engine
        self.failures += 1
        self._failing[key] += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= FAILURE_LOG_EVERY_S:
            self._failure_logged_at = now
            log.error("render batch of %d frames failed (engine %s, %d failed batches in a row); the sessions show "
                      "the idle loop", len(jobs), key, self._failing[key], exc_info=exc)
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
        for job in jobs:
            if job.fail is not None:
                self._loop.call_soon_threadsafe(job.fail, RenderFailure(job.session_id, job.frame_index,
                                                                        job.generation, error))

    def _render(self, jobs: list[RenderJob]) -> None:
        """Stack the jobs' inputs, call the engine, paste each face back and hand it to its session; timed."""
        stacking = time.perf_counter()
        names = list(jobs[0].inputs)
        batch = {name: np.stack([job.inputs[name] for job in jobs]) for name in names}
        started = time.perf_counter()
        key = jobs[0].engine
        faces = self.engines[key](batch)
        ended = time.perf_counter()
        render_ms = 1000 * (ended - started)
        self.stack_ms.append(1000 * (started - stacking))
        if self._failing[key]:
            log.warning("engine %s renders again after %d failed batches", key, self._failing.pop(key))
        self.calls += 1
        self.render_ms.append(render_ms)
        self.batch_sizes.append(len(jobs))
        for job, face in zip(jobs, faces, strict=True):
            if not job.is_current(job.generation):
                self.stale += 1
                continue
            frame = RenderedFrame(job.session_id, job.frame_index, job.generation, job.paste_back(face),
                                  render_ms, len(jobs))
            self._loop.call_soon_threadsafe(job.deliver, frame)
        self.paste_ms.append(1000 * (time.perf_counter() - ended))


def percentiles(values: deque[float]) -> tuple[float | None, float | None]:
    """The p50 and p99 of recent timings in ms, rounded to 0.01 ms; (None, None) when there are none yet."""
    recent = list(values)
    if not recent:
        return None, None
    p50, p99 = np.percentile(recent, [50, 99])
    return round(float(p50), 2), round(float(p99), 2)
