"""Settings of ``twincast serve``."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from twincast.errors import InputError

POSE_DRIVER_NAMES = ("loop", "still")
VIDEO_CODECS = ("vp8", "h264")
ENCODE_MODES = ("shared", "per-viewer")  # see stream.encode_once
LIMIT_RANGES: tuple[tuple[str, float, float], ...] = (  # each limit's setting and its allowed range
    ("max_viewers", 1, 1000),
    ("max_viewers_per_session", 1, 1000),
    ("max_sessions", 1, 256),
    ("max_body_bytes", 1024, 1024**3),
    ("operator_rate_per_s", 0.1, 100_000),
    ("operator_burst", 1, 100_000),
    ("max_auth_failures", 1, 1_000_000),
    ("auth_lockout_s", 1, 86_400),
    ("max_upload_bytes", 1024, 1024**4),
    ("twin_preview_every_s", 1, 86_400),
    ("train_threads", 0, 256),
)


@dataclass(frozen=True)
class ServeConfig:
    """The live server's configuration (one section of the layered config)."""

    host: str = "127.0.0.1"
    port: int = 8080
    engine: str = "auto"
    engine_fallback: bool = False  # `auto` may fall back to the next engine if the best one fails to start
    threads: int = 0
    max_batch: int = 8
    lead_frames: int = 2
    pose: str = "loop"
    video_codec: str = "vp8"
    encode: str = "shared"  # direct viewers of a session share one encoder (shared) or each has its own (per-viewer)
    max_viewers: int = 16  # WHEP viewers of all sessions together
    max_viewers_per_session: int = 16
    max_sessions: int = 8
    max_body_bytes: int = 20 * 1024 * 1024  # the largest request body (an audio file); JSON and SDP have 64 KiB
    operator_rate_per_s: float = 20.0  # operator requests per second and client address, ...
    operator_burst: int = 40  # ... with this many at once
    max_auth_failures: int = 10  # wrong tokens from one address within auth_lockout_s lock it out ...
    auth_lockout_s: float = 60.0  # ... for this long
    recordings_dir: Path = Path("recordings")  # recordings go here (created on demand); the API names files in it
    viewer_timeout_s: float = 10.0  # a viewer that sends no RTCP receiver report for this long is dropped
    max_queued_speech_s: float = 300.0
    twins_dir: Path = Path("twins")  # twins made from uploads (and by `twincast create`) live here; made on demand
    max_upload_bytes: int = 2 * 1024**3  # the largest video upload (POST /api/twins), streamed to disk
    twin_preview_every_s: float = 120.0  # a training job renders a holdout preview this often
    train_threads: int = 1  # a training job's CPU threads (0: measure; see stream.jobs)
    canvas: str = ""  # "" streams the pack's own frame; WIDTHxHEIGHT (720x1280, 1080x1920, 1280x720) a canvas
    canvas_background: str = "#14161c"  # behind the twin on the canvas: #rrggbb, or a picture or video file to loop
    commerce_dir: Path = Path("commerce")  # the product catalogue, its pictures and saved shows (made on demand)
    voice: str = "en-us"
    tts: str = "espeak-ng"
    noise_seed: int = 0
    operator_token: str | None = field(default=None, repr=False)  # from TWINCAST_OPERATOR_TOKEN only
    viewer_token: str | None = field(default=None, repr=False)  # from TWINCAST_VIEWER_TOKEN only
    stun_urls: tuple[str, ...] = ()  # ICE servers handed to viewers (stream.ice): stun:HOST[:PORT], comma-separated
    turn_urls: tuple[str, ...] = ()  # turn:HOST[:PORT][?transport=udp|tcp] or turns:…; needs turn_secret
    turn_secret: str | None = field(default=None, repr=False)  # coturn's static-auth-secret: TWINCAST_SERVE_TURN_SECRET
    turn_ttl_s: float = 86_400.0  # how long a viewer's TURN credentials stay good
    publish: tuple[str, ...] = field(default=(), repr=False)  # janus://HOST:PORT/ROOM[?secret=…] every session

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError as exc:
            if self.host != "localhost":
                raise InputError(f"serve host {self.host!r} is not an IP address") from exc
        if not 0 <= self.port <= 65535:
            raise InputError(f"serve port {self.port} is outside 0..65535")
        if not 1 <= self.max_batch <= 256:
            raise InputError(f"serve max_batch {self.max_batch} must be in 1..256")
        if not 1 <= self.lead_frames <= 25:
            raise InputError(f"serve lead_frames {self.lead_frames} must be in 1..25")
        if self.pose not in POSE_DRIVER_NAMES:
            raise InputError(f"serve pose {self.pose!r} must be one of {POSE_DRIVER_NAMES}")
        if self.video_codec not in VIDEO_CODECS:
            raise InputError(f"serve video_codec {self.video_codec!r} must be one of {VIDEO_CODECS}")
        if self.encode not in ENCODE_MODES:
            raise InputError(f"serve encode {self.encode!r} must be one of {ENCODE_MODES}")
        for name, low, high in LIMIT_RANGES:
            value = getattr(self, name)
            if not low <= value <= high:
                raise InputError(f"serve {name} {value} must be in {low}..{high}")
        if "\0" in str(self.twins_dir):
            raise InputError(f"serve twins_dir {str(self.twins_dir)!r} holds a NUL character")
        if "\0" in str(self.recordings_dir):
            raise InputError(f"serve recordings_dir {str(self.recordings_dir)!r} holds a NUL character")
        if not 1.0 <= self.viewer_timeout_s <= 600.0:
            raise InputError(f"serve viewer_timeout_s {self.viewer_timeout_s} must be in 1..600 seconds")
        for name, token in (("operator", self.operator_token), ("viewer", self.viewer_token)):
            if token is not None and len(token) < 8:
                raise InputError(f"the {name} token must be at least 8 characters")
        from stream.canvas import canvas_size

        canvas_size(self.canvas)  # raises InputError naming what is wrong
        if "\0" in str(self.commerce_dir):
            raise InputError(f"serve commerce_dir {str(self.commerce_dir)!r} holds a NUL character")
        if self.max_queued_speech_s <= 0:
            raise InputError(f"serve max_queued_speech_s {self.max_queued_speech_s} must be positive")
        from stream.ice import check_ice_settings

        check_ice_settings(self.stun_urls, self.turn_urls, self.turn_secret, self.turn_ttl_s)  # InputError naming it
        if self.publish:
            from stream.janus_output import parse_target

            for index, target in enumerate(self.publish, 1):
                try:
                    parse_target(target)  # publishes to (stream.janus_output); the secret is never shown
                except InputError as exc:
                    raise InputError(f"serve publish target {index} of {len(self.publish)}: {exc}") from exc

    @property
    def is_loopback(self) -> bool:
        """Whether the server only listens on this machine."""
        return self.host == "localhost" or ipaddress.ip_address(self.host).is_loopback
