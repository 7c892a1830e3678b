"""The live server's training jobs: twins made from uploaded videos while the show goes on.

Each job is a twin directory under ``serve.twins_dir``: the uploaded video (``source.<ext>``), this module's
``job.json`` (the job's id, state and settings), and what ``twincast create`` writes there (its resumable
``create.json``, the pack, the run, the artifact, the eval, the previews).

Jobs run one at a time (the server trains on one device: its CPU, or its GPU), each in a worker *process*,
``python -m twincast.cli create … --worker``: it runs at the lowest CPU priority (``SCHED_IDLE``), so it gets only
what the live render loop leaves; it reports JSON lines on its stdout, read here as they come; SIGTERM stops it
(cancel, server shutdown), and it gets SIGTERM by itself when the server process dies. Its stderr goes to
``create.log`` in the twin directory.

States: ``queued`` → ``running`` → ``done`` | ``failed`` | ``cancelled``. A server that stops (or dies) while a job
runs leaves it ``running`` on disk; the next start queues it again and ``twincast create`` continues it where it
stopped. A cancelled job's directory is removed (the name is free again); it stays listed until the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twincast.errors import InputError, NotFoundError
from twincast.files import atomic_write_bytes

log = logging.getLogger(__name__)
JOB_FILE = "job.json"  # (twincast.create.SERVER_JOB_FILES names these two)
CREATE_STATE = "create.json"  # written by `twincast create` (twincast.create.STATE_FILE)
CREATE_LOG = "create.log"
ACTIVE = ("queued", "running")
STOP_WAIT_S = 15.0  # after SIGTERM, before SIGKILL
MAX_MESSAGES = 50
SIZES = ("tiny", "tiny-latent", "demo", "base")
Notify = Callable[[str, str], object]  # (message, level) → the server's event log (its return is ignored)


@dataclass
class JobProgress:
    """What the worker said last: the stage, how far the run is, its ETA, the loss, its messages and previews."""

    stage: str | None = None
    fraction: float = 0.0  # of the stage
    progress: float = 0.0  # of the whole run
    eta_s: float | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None
    plan: dict[str, Any] | None = None
    plan_text: str | None = None
    preview: dict[str, Any] | None = None  # stage, step, at
    messages: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_MESSAGES))
    result: dict[str, Any] | None = None  # the done event's fields
    error: str | None = None


@dataclass
class Job:
    """One twin being made: its settings and state (saved as ``job.json``) and the worker's progress."""

    job_id: str
    name: str
    directory: Path
    video: str  # the uploaded file's name inside the directory
    size: str
    budget_s: float
    state: str = "queued"
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: JobProgress = field(default_factory=JobProgress)

    def save(self) -> None:
        """Write ``job.json`` (through a temporary file and a rename)."""
        record = {"id": self.job_id, "name": self.name, "video": self.video, "size": self.size,
                  "budget_s": self.budget_s, "state": self.state, "created_at": self.created_at,
                  "started_at": self.started_at, "finished_at": self.finished_at, "error": self.progress.error}
        atomic_write_bytes(self.directory / JOB_FILE, json.dumps(record, indent=1).encode())

    @classmethod
    def load(cls, directory: Path) -> Job:
        """Read ``job.json`` back, with what ``create.json`` says of the progress.

        Raises:
            InputError: the file is not a job record.
        """
        try:
            record = json.loads((directory / JOB_FILE).read_text())
            job = cls(str(record["id"]), str(record["name"]), directory, str(record["video"]), str(record["size"]),
                      float(record["budget_s"]), str(record["state"]), float(record["created_at"]),
                      record.get("started_at"), record.get("finished_at"))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{directory / JOB_FILE} is not a job record: {exc}") from exc
        job.progress.error = record.get("error")
        job.read_create_state()
        return job

    def read_create_state(self) -> None:
        """Fill the progress from ``create.json`` (the worker's own record, which outlives the server)."""
        path = self.directory / CREATE_STATE
        if not path.is_file():
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # being replaced right now: the worker's next line says the same
        progress = self.progress
        progress.plan = state.get("plan")
        progress.stage = state.get("current") or progress.stage
        progress.preview = state.get("preview")
        progress.messages.extend(state.get("messages", [])[-MAX_MESSAGES:])
        if state.get("state") == "done":
            progress.stage, progress.progress, progress.fraction, progress.eta_s = None, 1.0, 1.0, 0.0
            live = state.get("stages", {}).get("eval", {}).get("live")
            progress.result = {"live_variant": live["variant"], "figures": live} if live else None

    @property
    def elapsed_s(self) -> float | None:
        """Seconds since the worker started (to the end, once it has ended)."""
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    def describe(self) -> dict[str, Any]:
        """The job as the API shows it."""
        progress = self.progress
        stages = []
        for stage in (progress.plan or {}).get("stages", []):
            stages.append({key: stage[key] for key in ("name", "steps", "estimate_s", "note")})
        return {
            "id": self.job_id, "name": self.name, "state": self.state, "size": self.size, "budget_s": self.budget_s,
            "video": self.video, "created_at": self.created_at, "started_at": self.started_at,
            "finished_at": self.finished_at, "elapsed_s": _rounded(self.elapsed_s), "stage": progress.stage,
            "stages": stages, "stage_fraction": round(progress.fraction, 4), "progress": round(progress.progress, 4),
            "eta_s": _rounded(progress.eta_s), "step": progress.step, "steps": progress.steps, "loss": progress.loss,
            "plan": progress.plan_text, "preview": progress.preview, "messages": list(progress.messages),
            "result": progress.result, "error": progress.error,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


class JobManager:
    """Owns the jobs: takes new ones, runs them one at a time in a worker process, cancels them, and finds the
    unfinished ones again when the server starts.

    Args:
        twins_dir: where twin directories live.
        notify: the server's event log (job started, stage changes, done, failed).
        preview_every_s: how often the worker renders a holdout preview.
        threads: the worker's CPU threads (1 by default: at the lowest priority beside the live loop, a parallel
            step would stall each time the loop takes one of its cores; ``model.schedule.pick_threads``).
        command: the worker's program (default: this Python running ``twincast.cli``).
    """

    def __init__(self, twins_dir: Path, *, notify: Notify, preview_every_s: float = 120.0, threads: int = 1,
                 command: list[str] | None = None) -> None:
        self.twins_dir = twins_dir
        self._threads = threads
        self.jobs: dict[str, Job] = {}
        self._notify = notify
        self._preview_every_s = preview_every_s
        self._command = command or [sys.executable, "-m", "twincast.cli"]
        self._queue: asyncio.Queue[Job] = asyncio.Queue()  # unbounded: one entry per accepted upload
        self._runner: asyncio.Task[None] | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._running: Job | None = None
        self._cancelled: set[str] = set()
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Find the jobs on disk (queueing again those that were queued or running) and start the runner."""
        if self.twins_dir.is_dir():
            for directory in sorted(self.twins_dir.iterdir()):
                if not (directory / JOB_FILE).is_file():
                    continue
                try:
                    job = Job.load(directory)
                except InputError as exc:
                    log.warning("skipping a twin directory: %s", exc)
                    continue
                self.jobs[job.job_id] = job
                if job.state in ACTIVE:
                    job.state = "queued"
                    job.save()
                    self._queue.put_nowait(job)
                    self._notify(f"twin {job.name}: queued again after a restart (it continues where it stopped)",
                                 "info")
        self._runner = asyncio.create_task(self._run_queue(), name="twin-jobs")
        self._runner.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Stop the runner and the worker (its job stays ``running`` on disk, to be continued at the next start)."""
        self._stopping = True
        await self._terminate()
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)

    # --- jobs --------------------------------------------------------------------------------------------------

    def submit(self, name: str, directory: Path, video: str, size: str, budget_s: float) -> Job:
        """Queue a job for the video already in ``directory``."""
        job = Job(uuid.uuid4().hex[:12], name, directory, video, size, budget_s)
        job.save()
        self.jobs[job.job_id] = job
        self._queue.put_nowait(job)
        self._notify(f"twin {name}: queued ({size}, budget {budget_s:g} s)", "info")
        return job

    def get(self, job_id: str) -> Job:
        """A job by id.

        Raises:
            NotFoundError: no such job.
        """
        job = self.jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}")
        return job

    def by_name(self, name: str) -> Job | None:
        """The latest job of the twin ``name``."""
        jobs = [job for job in self.jobs.values() if job.name == name]
        return max(jobs, key=lambda job: job.created_at) if jobs else None

    def listed(self) -> list[Job]:
        """Every job, newest first."""
        return sorted(self.jobs.values(), key=lambda job: job.created_at, reverse=True)

    async def cancel(self, job_id: str) -> Job:
        """Stop a queued or running job and remove its directory; a job that has ended is left as it is.

        Raises:
            NotFoundError: no such job.
        """
        job = self.get(job_id)
        if job.state not in ACTIVE:
            return job
        self._cancelled.add(job_id)
        if self._running is job:
            await self._terminate()
        job.state = "cancelled"
        job.finished_at = time.time()
        await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, job.directory, True)
        self._notify(f"twin {job.name}: cancelled", "warning")
        return job

    # --- the runner ----------------------------------------------------------------------------------------------

    async def _run_queue(self) -> None:
        while True:
            job = await self._queue.get()
            if job.job_id in self._cancelled or job.state != "queued":
                continue
            await self._run(job)

    async def _run(self, job: Job) -> None:
        """Run ``job``'s worker to its end, following its progress."""
        job.state, job.started_at, job.progress.error = "running", job.started_at or time.time(), None
        job.save()
        self._notify(f"twin {job.name}: training started", "info")
        argv = [*self._command, "create", str(job.directory / job.video), "--name", job.name, "--out",
                str(job.directory), "--size", job.size, "--budget", f"{job.budget_s:g}s", "--preview-every",
                f"{self._preview_every_s:g}s", "--threads", str(self._threads), "--worker"]
        with (job.directory / CREATE_LOG).open("ab") as errors:
            self._running = job
            self._process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                                 stderr=errors, start_new_session=True)
            try:
                assert self._process.stdout is not None
                async for line in self._process.stdout:
                    self._heard(job, line)
                code = await self._process.wait()
            finally:
                self._process, self._running = None, None
        self._ended(job, code)

    def _heard(self, job: Job, line: bytes) -> None:
        """One line from the worker: a JSON event (anything else is logged and ignored)."""
        try:
            event = json.loads(line)
        except ValueError:
            log.debug("twin %s worker: %s", job.name, line[:200])
            return
        if not isinstance(event, dict):
            return
        progress = job.progress
        kind = event.get("type")
        if kind == "plan":
            progress.plan, progress.plan_text = event.get("plan"), event.get("text")
        elif kind == "stage":
            progress.stage, progress.fraction, progress.step, progress.steps = event.get("stage"), 0.0, None, None
            self._notify(f"twin {job.name}: {event.get('text')}", "info")
        elif kind == "progress":
            progress.stage = event.get("stage", progress.stage)
            progress.fraction = float(event.get("fraction", 0.0))
            progress.progress = float(event.get("progress", progress.progress))
            progress.eta_s = event.get("eta_s")
            progress.step, progress.steps = event.get("step"), event.get("steps")
            progress.loss = event.get("loss", progress.loss)
        elif kind in ("message", "preview"):
            progress.messages.append({"at": round(time.time(), 3), "text": event.get("text")})
            if kind == "preview":
                progress.preview = {"stage": event.get("stage"), "step": event.get("step"), "at": round(time.time(), 3)}
        elif kind == "done":
            progress.result = {"live_variant": event.get("live_variant"), "figures": event.get("figures"),
                               "seconds": event.get("seconds")}
            progress.progress, progress.eta_s, progress.stage = 1.0, 0.0, None
        elif kind == "error":
            progress.error = event.get("message") or event.get("text")

    def _ended(self, job: Job, code: int) -> None:
        job.finished_at = time.time()
        if job.job_id in self._cancelled:
            return  # cancel() records it
        if self._stopping:  # the server is stopping: the job stays running on disk and continues at the next start
            job.finished_at = None
            return
        if code == 0:
            job.state = "done"
            self._notify(f"twin {job.name}: ready ({(job.progress.result or {}).get('live_variant')})", "info")
        else:
            job.state = "failed"
            job.progress.error = job.progress.error or f"the worker exited with status {code}; see {CREATE_LOG}"
            self._notify(f"twin {job.name}: failed: {job.progress.error}", "error")
        job.save()

    async def _terminate(self) -> None:
        """SIGTERM the worker (its process group), SIGKILL it if it has not ended in ``STOP_WAIT_S``."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_WAIT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the twin job runner failed", exc_info=task.exception())
