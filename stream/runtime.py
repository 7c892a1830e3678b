"""The process-wide live runtime: the engine's render worker, the sessions, and the WebRTC viewers."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.exceptions import InternalError, InvalidAccessError, InvalidStateError, OperationError

from avatar.audio import MelSpec
from avatar.speech import Voice
from engines.base import Engine
from export.spec import TwinSpec
from stream.assets import TwinAssets
from stream.clock import MediaClock
from stream.config import ServeConfig
from stream.pose import make_pose_driver
from stream.render_worker import RenderWorker
from stream.session import TwinSession
from stream.tracks import TwinAudioTrack, TwinVideoTrack
from twincast.errors import InputError, NotFoundError, QueueFullError

log = logging.getLogger(__name__)
MAX_SDP_BYTES = 64 * 1024


@dataclass
class Viewer:
    """One WHEP viewer: its peer connection and the session it watches."""

    viewer_id: str
    session: TwinSession
    peer: RTCPeerConnection


class TwinRuntime:
    """Owns the render worker, the sessions and the viewers of one server process."""

    def __init__(self, engine: Engine, assets: TwinAssets, spec: TwinSpec, config: ServeConfig) -> None:
        self.engine = engine
        self.assets = assets
        self.spec = spec
        self.config = config
        self.sessions: dict[str, TwinSession] = {}
        self.viewers: dict[str, Viewer] = {}
        self.worker: RenderWorker | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Start the render worker and the default session."""
        loop = asyncio.get_running_loop()
        self.worker = RenderWorker(self.engine, loop, max_batch=self.config.max_batch)
        self.worker.start()
        self.add_session("default")

    def add_session(self, session_id: str) -> TwinSession:
        """Create a session with its own clock and start its producer."""
        if self.worker is None:
            raise RuntimeError("runtime not started")
        rng = np.random.default_rng(self.config.noise_seed)
        noise = rng.standard_normal((3, self.spec.crop_px, self.spec.crop_px)).astype(np.float32)
        session = TwinSession(
            session_id, self.assets, self.worker, MediaClock(self.spec.fps), mel_spec=MelSpec(**self.spec.mel),
            pose=make_pose_driver(self.config.pose, self.assets.base_count), lead_frames=self.config.lead_frames,
            noise=noise, max_queued_frames=int(self.config.max_queued_speech_s * self.spec.fps),
            voice=Voice(name=self.config.voice),
        )
        self.sessions[session_id] = session
        self.spawn(session.run(), name=f"session-{session_id}")
        return session

    def spawn(self, coroutine: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Create a named task that is kept referenced and whose failure is logged, not lost."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def session(self, session_id: str | None = None) -> TwinSession:
        """A session by id (the default one when ``None``)."""
        key = session_id or "default"
        if key not in self.sessions:
            raise NotFoundError(f"no session {key!r}; sessions: {sorted(self.sessions)}")
        return self.sessions[key]

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
        video_sender = peer.addTrack(TwinVideoTrack(session))
        peer.addTrack(TwinAudioTrack(session))
        codec = f"video/{self.config.video_codec}".lower()
        preferred = [c for c in RTCRtpSender.getCapabilities("video").codecs if c.mimeType.lower() == codec]
        for transceiver in peer.getTransceivers():
            if transceiver.sender is video_sender:
                transceiver.setCodecPreferences(preferred)  # must precede setRemoteDescription (DESIGN)
        try:
            await peer.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            await peer.setLocalDescription(await peer.createAnswer())
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            await peer.close()
            raise InputError(f"the SDP offer could not be parsed: {exc}") from exc
        except (InternalError, InvalidAccessError, InvalidStateError, OperationError) as exc:
            await peer.close()
            raise InputError(f"WebRTC negotiation failed ({type(exc).__name__}): {exc}") from exc
        self.viewers[viewer.viewer_id] = viewer
        session.viewers += 1

        @peer.on("connectionstatechange")
        async def on_state() -> None:
            if peer.connectionState in ("failed", "closed"):
                await self.remove_viewer(viewer.viewer_id, missing_ok=True)

        return viewer.viewer_id, peer.localDescription.sdp

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

    async def stop(self) -> None:
        """Close viewers, stop sessions and the worker, release the engine."""
        for viewer_id in list(self.viewers):
            await self.remove_viewer(viewer_id, missing_ok=True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.worker is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)
        self.engine.close()

    def stats(self) -> dict[str, Any]:
        """Server-wide stats; the default session's figures are repeated at the top level."""
        sessions = {key: session.stats() for key, session in self.sessions.items()}
        worker = self.worker
        summary: dict[str, Any] = dict(sessions.get("default", {}))
        summary.update({
            "sessions": sessions,
            "viewers": len(self.viewers),
            "engine": self.engine.describe(),
            "render_worker": {
                "calls": worker.calls if worker else 0,
                "dropped_jobs": worker.dropped if worker else 0,
                "stale_jobs": worker.stale if worker else 0,
                "failures": worker.failures if worker else 0,
                "mean_batch": round(float(np.mean(worker.batch_sizes)), 2) if worker and worker.batch_sizes else None,
            },
        })
        return summary
