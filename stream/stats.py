"""The shapes of what ``GET /api/stats`` and the dashboard's live feed report (JSON objects, typed here once).

Each owner fills its own part: a session its timeline figures, its channel the peers and outputs attached to it,
the render worker its calls, the runtime the whole.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict

from engines.base import EngineInfo


class QueueStats(TypedDict):
    """What is waiting: speech frames queued, render jobs queued (all sessions), live audio dropped."""

    speech_frames: int
    render_jobs: int
    live_frames_dropped: int


class PoseStats(TypedDict):
    """The pose driver: its mode, the base frame on screen, how often the webcam was lost."""

    mode: str
    base_index: int
    webcam_fallbacks: int


class OutputStats(TypedDict):
    """An RTMP push, a recording or a WHIP publish (the stream key and the WHIP bearer token masked)."""

    id: str
    session: str
    kind: str
    target: str
    state: str
    error: str | None
    connects: int
    reconnects: int
    video_frames: int
    audio_frames: int
    dropped: int
    repeated: int
    token: NotRequired[str | None]  # a WHIP publish's bearer token, masked (None when it has none)


class UpstreamStats(TypedDict):
    """The operator's microphone or webcam peer."""

    id: str
    kind: str
    session: str
    state: str
    frames: int
    measured: int
    errors: int


class DegradedStats(TypedDict):
    """Why a session is degraded (showing its idle footage loop instead of renders) and since when."""

    reason: str
    since: float  # wall-clock seconds since the epoch


class TimelineStats(TypedDict):
    """One session's timeline (``TwinSession.stats``): rate, render times, late/repeated/stale frames, speech.

    ``repeated_frames`` counts frames shown without their render (the last render repeated, or, once a render is
    a few frames overdue, the un-rendered base frame: those are ``idle_frames`` too); ``failed_frames`` counts
    renders the engine failed; ``degraded`` is None while the session renders normally.
    """

    session: str
    twin: str
    fps: float
    render_ms_p50: float | None
    render_ms_p99: float | None
    compose_ms_p50: float | None  # pasting the face, the canvas and the on-screen elements (render worker)
    compose_ms_p99: float | None
    late_frames: int
    repeated_frames: int
    idle_frames: int
    failed_frames: int
    degraded: DegradedStats | None
    stale_frames: int
    speaking: bool
    generation: int
    interrupts: int
    frame_index: int
    audio_to_frame_ms: float
    queue: QueueStats
    pose: PoseStats
    frame_size: list[int]
    egress_frames: int


class EncodeStats(TypedDict):
    """How a session's direct viewers are encoded (``stream.encode_once``): the mode, and in shared mode the frames
    encoded once for all, frames encoded for one repairing viewer, shared keyframes, and repairs."""

    mode: str
    shared_frames: int
    private_frames: int
    shared_keyframes: int
    repairs: int


class SessionStats(TimelineStats):
    """One session's figures: its timeline and what its channel has attached (``Channel.stats``)."""

    viewers: int
    encode: EncodeStats
    outputs: list[OutputStats]
    upstreams: list[UpstreamStats]


class WorkerStats(TypedDict):
    """The render worker: engine calls, jobs dropped on overflow or as stale, failed batches, mean batch size, and
    the p50/p99 ms of each stage of its recent batches (``stream.render_worker``; None before the first batch)."""

    calls: int
    dropped_jobs: int
    stale_jobs: int
    failures: int
    mean_batch: float | None
    queue_wait_ms_p50: NotRequired[float | None]  # a batch's oldest job submitted → the worker takes the batch
    queue_wait_ms_p99: NotRequired[float | None]
    stack_ms_p50: NotRequired[float | None]  # the inputs stacked (np.stack)
    stack_ms_p99: NotRequired[float | None]
    engine_ms_p50: NotRequired[float | None]  # the engine call
    engine_ms_p99: NotRequired[float | None]
    paste_ms_p50: NotRequired[float | None]  # the batch's paste-backs (face into frame, composite, I420)
    paste_ms_p99: NotRequired[float | None]


class ServerStats(TypedDict):
    """The whole server: every session, the viewers, the twins, the engines and the render worker."""

    sessions: dict[str, SessionStats]
    default_session: str | None
    viewers: int
    twins: list[str]
    engine: EngineInfo
    engines: dict[str, EngineInfo]
    render_worker: WorkerStats


def stats_json(stats: ServerStats) -> dict[str, object]:
    """``/api/stats``: the server's figures, with the default session's repeated at the top level (so a client
    of a one-twin server reads ``fps`` or ``queue`` without naming the session)."""
    default = stats["sessions"].get(stats["default_session"] or "")
    return {**(default or {}), **stats}
