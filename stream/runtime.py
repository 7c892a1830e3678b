"""The process-wide live runtime: twins and their engines, sessions, viewers, upstream peers and outputs.

One render worker thread owns every engine. Each session has one paced video source track, relayed to its
viewers and outputs by aiortc's ``MediaRelay`` (yuv420p frames, so several viewers are safe, aiortc #767);
audio tracks are cheap, so every consumer gets its own, paced on the same session clock.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from avatar.speech import Voice
from engines.base import Engine
from stream.clock import MediaClock
from stream.config import ServeConfig
from stream.events import EventLog
from stream.outputs import StreamOutput
from stream.render_worker import RenderWorker
from stream.script import Script
from stream.session import Twin, TwinSession
from stream.tracks import TwinAudioTrack, TwinVideoTrack
from stream.tts import make_tts
from stream.upstream import Upstream, consume_microphone, consume_webcam
from twincast.errors import InputError, NotFoundError, QueueFullError

log = logging.getLogger(__name__)
MAX_SDP_BYTES = 64 * 1024
SESSION_ID = re.compile(r"^[A-Za-z0-9_\-]{1,40}$")


@dataclass
class Viewer:
    """One WHEP viewer: its peer connection and the session it watches."""

    viewer_id: str
    session: TwinSession
    peer: RTCPeerConnection


class TwinRuntime:
    """Owns the render worker, the twins, the sessions and everything connected to them."""

    def __init__(self, twins: dict[str, Twin], engines: dict[str, Engine], config: ServeConfig) -> None:
        if not twins:
            raise InputError("at least one twin is needed")
        self.twins = twins
        self.engines = engines
        self.config = config
        self.sessions: dict[str, TwinSession] = {}
        self.video_sources: dict[str, TwinVideoTrack] = {}
        self.viewers: dict[str, Viewer] = {}
        self.upstreams: dict[str, Upstream] = {}
        self.outputs: dict[str, StreamOutput] = {}
        self.relay = MediaRelay()
        self.events = EventLog()
        self.scripts: dict[str, Script] = {}
        self.worker: RenderWorker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._seen: dict[str, Any] = {}
        self._clock_grid = time.monotonic()  # every session's clock ticks on this grid

    async def start(self) -> None:
        """Start the render worker and one session per twin (named after it)."""
        self.worker = RenderWorker(self.engines, asyncio.get_running_loop(), max_batch=self.config.max_batch)
        self.worker.start()
        for name in self.twins:
            self.add_session(name, name)
        self.spawn(self._watch(), "watch")
        self.events.emit("server", f"serving {len(self.twins)} twin(s) with {len(self.engines)} engine(s)")

    @property
    def default_session_id(self) -> str:
        """The first twin's session, used when a request names none."""
        return next(iter(self.sessions))

    def add_session(self, session_id: str, twin_name: str) -> TwinSession:
        """Create a session of a loaded twin with its own clock, and start its producer.

        Raises:
            InputError: a bad or taken session id.
            NotFoundError: no such twin.
        """
        if self.worker is None:
            raise RuntimeError("runtime not started")
        if not SESSION_ID.match(session_id):
            raise InputError(f"session id {session_id!r} must be 1-40 letters, digits, '-' or '_'")
        if session_id in self.sessions:
            raise InputError(f"session {session_id!r} exists already")
        if twin_name not in self.twins:
            raise NotFoundError(f"no twin {twin_name!r}; twins: {sorted(self.twins)}")
        twin = self.twins[twin_name]
        rng = np.random.default_rng(self.config.noise_seed)
        noise_shape = self.engines[twin.engine].input_shape("noise", 1)[1:]  # the crop's, or a latent model's
        noise = rng.standard_normal(noise_shape).astype(np.float32)
        session = TwinSession(
            session_id, twin, self.worker, MediaClock(twin.mel_spec.fps, grid=self._clock_grid),
            tts=make_tts(self.config.tts, Voice(name=self.config.voice)), pose_mode=self.config.pose,
            lead_frames=self.config.lead_frames, noise=noise,
            max_queued_frames=int(self.config.max_queued_speech_s * twin.mel_spec.fps), spawn=self.spawn,
        )
        self.sessions[session_id] = session
        self.worker.feeds[twin.engine] += 1
        self.scripts[session_id] = Script()
        self.video_sources[session_id] = TwinVideoTrack(session)
        self.spawn(session.run(), f"session-{session_id}")
        self.events.emit("session", f"session started ({twin.name})", session=session_id)
        return session

    async def remove_session(self, session_id: str) -> None:
        """Stop a session and everything attached to it."""
        session = self.session(session_id)
        for viewer_id in [v for v, viewer in self.viewers.items() if viewer.session is session]:
            await self.remove_viewer(viewer_id)
        for upstream_id in [u for u, up in self.upstreams.items() if up.session is session]:
            await self.remove_upstream(upstream_id)
        for output_id in [o for o, out in self.outputs.items() if out.session_id == session_id]:
            await self.remove_output(output_id)
        for task in [t for t in self._tasks if t.get_name() == f"session-{session_id}"]:
            task.cancel()
        self.video_sources.pop(session_id).stop()
        if self.worker is not None:
            self.worker.feeds[session.twin.engine] -= 1
        del self.sessions[session_id]
        del self.scripts[session_id]
        self._forget(f"{session_id}.")
        self.events.emit("session", "session stopped", session=session_id)

    def _forget(self, prefix: str) -> None:
        """Drop the watched values of something removed (a re-created one starts afresh)."""
        for key in [k for k in self._seen if k.startswith(prefix)]:
            del self._seen[key]

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

    def script(self, session_id: str | None = None) -> Script:
        """A session's script."""
        return self.scripts[self.session(session_id).session_id]

    async def _watch(self, every_s: float = 0.5) -> None:
        """Turn state changes into events: speech starting and ending, viewers, outputs, late frames, webcam loss."""
        while True:
            await asyncio.sleep(every_s)
            for key, session in self.sessions.items():
                self._changed(f"{key}.speaking", session.speaking, key,
                              lambda on: ("speech", "speaking" if on else "silent", "info"))
                self._changed(f"{key}.viewers", session.viewers, key,
                              lambda count: ("viewer", f"{count} viewer(s)", "info"))
                self._grew(f"{key}.late", session.late_frames, key, "frames rendered late")
                self._grew(f"{key}.fallbacks", session.pose.fallbacks, key, "webcam lost: back to the footage loop")
                self._grew(f"{key}.live_dropped", session.audio_queue.dropped_live, key,
                           "live audio dropped to keep latency bounded")
            for output in self.outputs.values():
                self._changed(f"output.{output.output_id}", output.state, output.session_id,
                              lambda state, o=output: ("output", f"{o.kind} {o.describe()['target']}: {state}"
                                                       + (f" ({o.error})" if o.error else ""),
                                                       "warning" if state in ("reconnecting", "failed") else "info"))
            if self.worker is not None:
                self._grew("worker.failures", self.worker.failures, None, "render batches failed")

    def _changed(self, key: str, value: Any, session: str | None, describe: Any) -> None:
        if key in self._seen and self._seen[key] != value:
            kind, message, level = describe(value)
            self.events.emit(kind, message, session=session, level=level)
        self._seen[key] = value

    def _grew(self, key: str, value: int, session: str | None, message: str) -> None:
        before = self._seen.get(key, value)
        if value > before:
            self.events.emit("warning", f"{value - before} {message}", session=session, level="warning")
        self._seen[key] = value

    def session(self, session_id: str | None = None) -> TwinSession:
        """A session by id (the default one when ``None``)."""
        key = session_id or self.default_session_id
        if key not in self.sessions:
            raise NotFoundError(f"no session {key!r}; sessions: {sorted(self.sessions)}")
        return self.sessions[key]

    # --- WebRTC peers ----------------------------------------------------------------------------------------

    async def _answer(self, peer: RTCPeerConnection, offer_sdp: str) -> str:
        try:
            await peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await peer.setLocalDescription(await peer.createAnswer())
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            await peer.close()
            raise InputError(f"the SDP offer could not be parsed: {exc}") from exc
        except (InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            await peer.close()
            raise InputError(f"WebRTC negotiation failed ({type(exc).__name__}): {exc}") from exc
        return str(peer.localDescription.sdp)

    async def add_viewer(self, offer_sdp: str, session_id: str | None = None) -> tuple[str, str]:
        """Answer a WHEP offer; returns (viewer id, answer SDP).

        Raises:
            InputError: the offer is not a usable SDP offer with a video section.
            QueueFullError: the viewer limit is reached.
        """
        session = self.session(session_id)
        if len(self.viewers) >= self.config.max_viewers:
            raise QueueFullError(f"viewer limit reached ({self.config.max_viewers}); try again later")
        if "m=video" not in offer_sdp:
            raise InputError("the SDP offer has no video section (m=video); expected a recvonly video offer")
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        viewer = Viewer(uuid.uuid4().hex, session, peer)
        video_sender = peer.addTrack(self.relay.subscribe(self.video_sources[session.session_id], buffered=False))
        peer.addTrack(TwinAudioTrack(session))
        codec = f"video/{self.config.video_codec}".lower()
        preferred = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == codec]
        for transceiver in peer.getTransceivers():
            if transceiver.sender is video_sender:
                transceiver.setCodecPreferences(preferred)  # must precede setRemoteDescription (DESIGN)
        answer = await self._answer(peer, offer_sdp)
        self.viewers[viewer.viewer_id] = viewer
        session.viewers += 1

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.viewer_id, missing_ok=True)

        return viewer.viewer_id, answer

    async def remove_viewer(self, viewer_id: str, *, missing_ok: bool = False) -> None:
        """Close a viewer's connection.

        Raises:
            NotFoundError: no such viewer (unless ``missing_ok``).
        """
        viewer = self.viewers.pop(viewer_id, None)
        if viewer is None:
            if missing_ok:
                return
            raise NotFoundError(f"no WHEP viewer {viewer_id!r}")
        viewer.session.viewers -= 1
        await viewer.peer.close()

    async def add_upstream(self, kind: str, offer_sdp: str, session_id: str | None = None) -> tuple[str, str]:
        """Accept the operator's microphone (``mic``) or webcam (``webcam``) offer; returns (id, answer SDP)."""
        session = self.session(session_id)
        media = {"mic": "audio", "webcam": "video"}[kind]
        if f"m={media}" not in offer_sdp:
            raise InputError(f"the {kind} offer has no {media} section (m={media})")
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        upstream = Upstream(uuid.uuid4().hex, kind, session, peer)
        consume = consume_microphone if kind == "mic" else consume_webcam

        @peer.on("track")
        def on_track(track: Any) -> None:
            if track.kind == media:
                self.spawn(consume(track, upstream), f"{kind}-{upstream.upstream_id}")

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self.remove_upstream(upstream.upstream_id, missing_ok=True)

        answer = await self._answer(peer, offer_sdp)
        self.upstreams[upstream.upstream_id] = upstream
        self.events.emit("input", f"{kind} connected", session=session.session_id)
        return upstream.upstream_id, answer

    async def remove_upstream(self, upstream_id: str, *, missing_ok: bool = False) -> None:
        """Close an upstream peer; its consumer task ends with the track."""
        upstream = self.upstreams.pop(upstream_id, None)
        if upstream is None:
            if missing_ok:
                return
            raise NotFoundError(f"no upstream {upstream_id!r}")
        await upstream.peer.close()
        self.events.emit("input", f"{upstream.kind} disconnected", session=upstream.session.session_id)

    # --- outputs ---------------------------------------------------------------------------------------------

    def add_output(self, kind: str, target: str, session_id: str | None = None) -> StreamOutput:
        """Start pushing a session to RTMP or recording it to MP4."""
        session = self.session(session_id)
        output = StreamOutput(uuid.uuid4().hex[:12], session.session_id, kind, target,
                              self.relay.subscribe(self.video_sources[session.session_id], buffered=False),
                              TwinAudioTrack(session), session.assets.frame_size, session.clock.fps)
        output.start(self.spawn)
        self.outputs[output.output_id] = output
        self.events.emit("output", f"{kind} output started: {output.describe()['target']}", session=output.session_id)
        return output

    async def remove_output(self, output_id: str) -> dict[str, Any]:
        """Stop an output (finishing a recording); returns its final description."""
        output = self.outputs.pop(output_id, None)
        if output is None:
            raise NotFoundError(f"no output {output_id!r}")
        await output.stop()
        self._forget(f"output.{output_id}")
        described = output.describe()
        self.events.emit("output", f"{described['kind']} output stopped: {described['target']}",
                         session=described["session"])
        return described

    # --- lifecycle and reporting -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Close peers and outputs, stop sessions and the worker, release the engines."""
        for viewer_id in list(self.viewers):
            await self.remove_viewer(viewer_id, missing_ok=True)
        for upstream_id in list(self.upstreams):
            await self.remove_upstream(upstream_id, missing_ok=True)
        for output_id in list(self.outputs):
            await self.remove_output(output_id)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        for engine in self.engines.values():
            engine.close()

    def stats(self) -> dict[str, Any]:
        """Server-wide stats; the default session's figures are repeated at the top level."""
        sessions = {}
        for key, session in self.sessions.items():
            row = session.stats()
            row["outputs"] = [o.describe() for o in self.outputs.values() if o.session_id == key]
            row["upstreams"] = [u.describe() for u in self.upstreams.values() if u.session is session]
            row["egress_frames"] = session.egress_frames
            sessions[key] = row
        worker = self.worker
        summary: dict[str, Any] = dict(sessions.get(self.default_session_id, {})) if sessions else {}
        summary.update({
            "sessions": sessions,
            "viewers": len(self.viewers),
            "twins": sorted(self.twins),
            "engine": next(iter(self.engines.values())).describe(),
            "engines": {key: engine.describe() for key, engine in self.engines.items()},
            "render_worker": {
                "calls": worker.calls if worker else 0,
                "dropped_jobs": worker.dropped if worker else 0,
                "stale_jobs": worker.stale if worker else 0,
                "failures": worker.failures if worker else 0,
                "mean_batch": round(float(np.mean(worker.batch_sizes)), 2) if worker and worker.batch_sizes else None,
            },
        })
        return summary
