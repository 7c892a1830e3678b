"""The process-wide live runtime: the twins and their engines, the render worker, and the channels.

Ownership, one owner per piece of state: the runtime owns the twins, the engines, the render worker, the event
log, the background tasks and the channels (one per session, keyed by session id, in one dict); each channel
owns its session, viewers, upstream peers, outputs and script (``stream.channel``); the worker owns which
engines sessions feed (``attach``/``detach``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import numpy as np
from aiortc.contrib.media import MediaRelay

from avatar.speech import Voice
from engines.base import Engine
from stream.canvas import Background, Compositor, canvas_size
from stream.channel import Channel
from stream.clock import MediaClock
from stream.config import ServeConfig
from stream.events import EventLog
from stream.outputs import Output, recording_path
from stream.peers import Census
from stream.render_worker import RenderWorker
from stream.script import Script
from stream.session import Twin, TwinSession
from stream.stats import ServerStats
from stream.tts import make_tts
from stream.twins import LoadedTwin, switch_compositor
from twincast.errors import InputError, LimitError, NotFoundError

log = logging.getLogger(__name__)
SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")
RETRY_FULL_S = 30.0  # what a viewer refused at capacity is told to wait before trying again


class TwinRuntime:
    """Owns the render worker, the twins and the channels (sessions with everything connected to them)."""

    def __init__(self, twins: dict[str, Twin], engines: dict[str, Engine], config: ServeConfig, *,
                 background: Background | None = None) -> None:
        if not twins:
            raise InputError("at least one twin is needed")
        self.twins = twins
        self.engines = engines
        self.config = config
        self.canvas = canvas_size(config.canvas)  # None: every session streams its pack's own frame
        self.background = background  # prepared once (off the loop) and shared by every session's canvas
        self.channels: dict[str, Channel] = {}
        self.relay = MediaRelay()
        self.census = Census()  # watches every peer and relay subscription made, for GET /api/debug/resources
        self.events = EventLog()
        self.worker: RenderWorker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._answering: Counter[str] = Counter()  # WHEP offers being answered, per session (for the limits)
        self._clock_grid = time.monotonic()  # every session's clock ticks on this grid

    async def start(self) -> None:
        """Start the render worker and one session per twin (named after it)."""
        self.worker = RenderWorker(self.engines, asyncio.get_running_loop(), max_batch=self.config.max_batch)
        self.worker.start()
        for name in self.twins:
            self.add_session(name, name)
        self.events.emit("server", f"serving {len(self.twins)} twin(s) with {len(self.engines)} engine(s)")

    # --- sessions --------------------------------------------------------------------------------------------

    @property
    def default_session_id(self) -> str | None:
        """The first session, used when a request names none (None when no session runs)."""
        return next(iter(self.channels), None)

    def channel(self, session_id: str | None = None) -> Channel:
        """A session's channel by id (the default one when ``None``).

        Raises:
            NotFoundError: no such session.
        """
        key = session_id or self.default_session_id
        if key is None or key not in self.channels:
            raise NotFoundError(f"no session {key!r}; sessions: {sorted(self.channels)}")
        return self.channels[key]

    def session(self, session_id: str | None = None) -> TwinSession:
        """A session by id (the default one when ``None``)."""
        return self.channel(session_id).session

    def script(self, session_id: str | None = None) -> Script:
        """A session's script."""
        return self.channel(session_id).script

    def add_session(self, session_id: str, twin_name: str) -> TwinSession:
        """Create a session of a loaded twin with its own clock, and start its producer (and its publishes to the
        Janus rooms of ``config.publish``).

        Raises:
            InputError: a bad or taken session id.
            NotFoundError: no such twin.
            LimitError: ``max_sessions`` sessions run already (503).
        """
        if self.worker is None:
            raise RuntimeError("runtime not started")
        if not SESSION_ID.match(session_id):
            raise InputError(f"session id {session_id!r} must be 1-40 letters, digits, '-' or '_'")
        if session_id in self.channels:
            raise InputError(f"session {session_id!r} exists already")
        if len(self.channels) >= self.config.max_sessions:
            raise LimitError(f"session limit reached: {len(self.channels)} sessions run, max_sessions is "
                             f"{self.config.max_sessions}; stop one first", limit="max_sessions",
                             value=self.config.max_sessions, http_status=503)
        if twin_name not in self.twins:
            raise NotFoundError(f"no twin {twin_name!r}; twins: {sorted(self.twins)}")
        twin = self.twins[twin_name]
        noise = self._noise(twin)
        session = TwinSession(
            session_id, twin, self.worker, MediaClock(twin.mel_spec.fps, grid=self._clock_grid),
            tts=make_tts(self.config.tts, Voice(name=self.config.voice)), pose_mode=self.config.pose,
            lead_frames=self.config.lead_frames, noise=noise,
            max_queued_frames=int(self.config.max_queued_speech_s * twin.mel_spec.fps), spawn=self.spawn,
            compositor=Compositor(twin.assets, twin.mel_spec.fps, canvas=self.canvas, background=self.background),
        )
        self.worker.attach(twin.engine)
        self.channels[session_id] = Channel(session, relay=self.relay, census=self.census, events=self.events,
                                            spawn=self.spawn, video_codec=self.config.video_codec,
                                            viewer_timeout_s=self.config.viewer_timeout_s,
                                            encode=self.config.encode)
        self.events.emit("session", f"session started ({twin.name})", session=session_id)
        for target in self.config.publish:  # serve --publish: every session goes to these Janus rooms
            self.channels[session_id].add_output("janus", target)
        return session

    def _noise(self, twin: Twin) -> np.ndarray:
        """The fixed noise a session renders ``twin`` with: the crop's shape, or a latent model's."""
        rng = np.random.default_rng(self.config.noise_seed)
        noise_shape = self.engines[twin.engine].input_shape("noise", 1)[1:]
        return rng.standard_normal(noise_shape).astype(np.float32)

    def add_twin(self, loaded: LoadedTwin) -> Twin:
        """Make a twin loaded while serving (``stream.twins.load_twin``, off the loop) available to sessions; the
        engine it brought, if any, joins those the render worker runs.

        Raises:
            InputError: a twin of that name is loaded already.
        """
        if loaded.twin.name in self.twins:
            if loaded.engine is not None:
                loaded.engine.close()
            raise InputError(f"a twin named {loaded.twin.name!r} is loaded already")
        if loaded.engine is not None:
            self.engines[loaded.engine_key] = loaded.engine  # the render worker reads this same dict
        self.twins[loaded.twin.name] = loaded.twin
        self.events.emit("twin", f"twin {loaded.twin.name} loaded")
        return loaded.twin

    def switch_twin(self, session_id: str | None, twin_name: str) -> TwinSession:
        """Make a session show another loaded twin from its next tick; its viewers, inputs and outputs stay
        connected and its picture keeps its size (``TwinSession.switch_twin``, ``stream.twins``).

        Raises:
            NotFoundError: no such session or twin.
            InputError: the twin cannot join this session (other audio features).
        """
        session = self.session(session_id)
        if twin_name not in self.twins:
            raise NotFoundError(f"no twin {twin_name!r} is loaded; twins: {sorted(self.twins)}")
        twin = self.twins[twin_name]
        session.switch_twin(twin, self._noise(twin), switch_compositor(session.compositor, twin.assets))
        self.events.emit("session", f"switching to twin {twin.name}", session=session.session_id)
        return session

    async def remove_session(self, session_id: str) -> None:
        """Stop a session and everything attached to it.

        Raises:
            NotFoundError: no such session.
        """
        channel = self.channel(session_id)
        del self.channels[session_id]
        await channel.close()
        if self.worker is not None:
            self.worker.detach(channel.session.twin.engine)
        self.events.emit("session", "session stopped", session=session_id)

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Create a named task that is kept referenced and whose failure is logged, not lost."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    # --- viewers, upstreams and outputs, found across channels ------------------------------------------------

    @property
    def viewer_count(self) -> int:
        """WHEP viewers of all sessions."""
        return sum(len(channel.viewers) for channel in self.channels.values())

    async def add_viewer(self, offer_sdp: str, session_id: str | None = None) -> tuple[str, str]:
        """Answer a WHEP offer for a session; returns (viewer id, answer SDP).

        Raises:
            InputError: the offer is not a usable SDP offer with a video section.
            NotFoundError: no such session.
            LimitError: ``max_viewers`` (all sessions) or ``max_viewers_per_session`` is reached (503).
        """
        channel = self.channel(session_id)
        key = channel.session_id
        answering = sum(self._answering.values())  # offers being answered count too: they may all succeed
        for limit, count, value in (
                ("max_viewers", self.viewer_count + answering, self.config.max_viewers),
                ("max_viewers_per_session", len(channel.viewers) + self._answering[key],
                 self.config.max_viewers_per_session)):
            if count >= value:
                raise LimitError(f"viewer limit reached: {limit} is {value}; try again later", limit=limit,
                                 value=value, http_status=503, retry_after_s=RETRY_FULL_S)
        self._answering[key] += 1
        try:
            return await channel.add_viewer(offer_sdp)
        finally:
            self._answering[key] -= 1

    async def remove_viewer(self, viewer_id: str) -> None:
        """Close a viewer's connection, whichever session it watches.

        Raises:
            NotFoundError: no such viewer.
        """
        for channel in list(self.channels.values()):
            if await channel.remove_viewer(viewer_id):
                return
        raise NotFoundError(f"no WHEP viewer {viewer_id!r}")

    async def add_upstream(self, kind: str, offer_sdp: str, session_id: str | None = None) -> tuple[str, str]:
        """Accept the operator's microphone, webcam or WHIP ingest offer for a session; returns (id, answer SDP)."""
        return await self.channel(session_id).add_upstream(kind, offer_sdp)

    async def remove_upstream(self, upstream_id: str) -> None:
        """Close an upstream peer, whichever session it feeds.

        Raises:
            NotFoundError: no such upstream.
        """
        for channel in list(self.channels.values()):
            if await channel.remove_upstream(upstream_id):
                return
        raise NotFoundError(f"no upstream {upstream_id!r}")

    def add_output(self, kind: str, target: str, session_id: str | None = None, *,
                   token: str | None = None) -> Output:
        """Start pushing a session to RTMP, recording it to MP4 under ``config.recordings_dir`` (``target``
        names the file inside it: see ``outputs.recording_path``), or publishing it to a WHIP endpoint (``target``
        its URL, ``token`` its bearer token)."""
        channel = self.channel(session_id)
        if kind == "record":
            target = str(recording_path(target, self.config.recordings_dir))
        return channel.add_output(kind, target, token)

    def outputs(self) -> list[Output]:
        """Every running output, session by session."""
        return [output for channel in self.channels.values() for output in channel.outputs.values()]

    async def remove_output(self, output_id: str) -> Output:
        """Stop an output (finishing a recording), whichever session it belongs to.

        Raises:
            NotFoundError: no such output.
        """
        for channel in list(self.channels.values()):
            output = await channel.remove_output(output_id)
            if output is not None:
                return output
        raise NotFoundError(f"no output {output_id!r}")

    # --- lifecycle and reporting -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close every channel, stop the remaining tasks and the worker, release the engines."""
        for session_id in list(self.channels):
            await self.remove_session(session_id)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        for engine in self.engines.values():
            engine.close()

    def stats(self) -> ServerStats:
        """Every session's figures, the viewers, the twins, the engines and the render worker."""
        worker = self.worker
        return {
            "sessions": {key: channel.stats() for key, channel in self.channels.items()},
            "default_session": self.default_session_id,
            "viewers": self.viewer_count,
            "twins": sorted(self.twins),
            "engine": next(iter(self.engines.values())).describe(),
            "engines": {key: engine.describe() for key, engine in self.engines.items()},
            "render_worker": worker.stats() if worker is not None else {
                "calls": 0, "dropped_jobs": 0, "stale_jobs": 0, "failures": 0, "mean_batch": None},
        }
