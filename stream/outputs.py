"""Outputs: a session pushed to an RTMP(S) ingest (FLV, H.264 + AAC, 2 s GOP) or recorded to MP4.

An output reads the session's relayed tracks like any viewer, and hands frames to an encoder thread through a
bounded queue (overflow rule: drop the oldest; the muxer follows the frames' own timestamps, so a dropped frame is
a repeat at the far end, never a drift). The video it writes is constant-rate: a frame the session skipped (egress
keeps its clock when the machine is loaded) or the queue dropped is filled by repeating the picture before it (up
to ``MAX_FILL_S``), so editors and ingests see 25 fps, not a variable rate. An RTMP push sends its FLV through a
child process (``stream.rtmp_push``), so an ingest that never answers can only stall that child, never the server;
when the ingest goes away, does not answer within 10 s or stops taking data, the thread reconnects with
exponential backoff (1 s doubling to 30 s; from 1 s again once it has been live for
``STABLE_LIVE_S``; ``Backoff``). It is ``live`` only once connected (the header written), so an ingest that refuses
connections shows ``reconnecting`` throughout. A WHIP publish (``stream.whip_output``) and a Janus VideoRoom publish
(``stream.janus_output``) are outputs too, and back off the same way.

Recordings are fragmented MP4 (``stream.fmp4``) written to a hidden temporary file (``.recording-*.mp4``) and
renamed to their name when they stop. When writing fails (a full disk) the recording stops with state ``failed``
and a reason that says so; its file is cut back to its last whole fragment and kept as ``NAME.partial.mp4``
(playable up to about 2 s before the failure), never under the finished recording's name; the stream and every
other output go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import queue
import re
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Protocol

import av
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream.fmp4 import FRAGMENTED_MP4_OPTIONS, whole_fragments_bytes
from stream.rtmp_push import RtmpPusher
from stream.session import Spawn
from stream.stats import OutputStats
from twincast.errors import InputError

log = logging.getLogger(__name__)
GOP_S = 2
VIDEO_BITRATE = 1_500_000
AUDIO_BITRATE = 128_000
MAX_BACKOFF_S = 30.0
STABLE_LIVE_S = 5.0  # a push live this long has recovered: its next outage backs off from 1 s again
QUEUE_FRAMES = 100
MAX_FILL_S = 2.0  # a longer hole in the video (a stall) is left as a hole rather than filled with one picture
MAX_URL_CHARS = 2048
RTMP_URL = re.compile(r"^rtmps?://[!-.0-~]+/[!-~]+$")  # printable ASCII; no '/' in the host part
MAX_RECORDING_DEPTH = 4
RECORDING_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def mask_key(key: str) -> str:
    """A secret (a stream key, a bearer token) hidden but for its last 4 characters (all of it when short)."""
    return "*" * 8 + (key[-4:] if len(key) > 8 else "")


def mask_url(url: str) -> str:
    """An RTMP URL with its stream key hidden (all but the last 4 characters), safe for logs and responses."""
    match = re.match(r"^(rtmps?://[^?#]*/)([^/?#]+)(.*)$", url)
    if not match:
        return url
    prefix, key, rest = match.groups()
    return f"{prefix}{mask_key(key)}{'?…' if rest else ''}"


class Output(Protocol):
    """What a channel holds of each output: an RTMP push or a recording (``StreamOutput``), a WHIP publish
    (``stream.whip_output.WhipOutput``) or a Janus VideoRoom publish (``stream.janus_output.JanusOutput``)."""

    output_id: str
    session_id: str
    kind: str
    state: str
    error: str | None

    def describe(self) -> OutputStats:
        """For the API and stats, secrets masked."""
        ...

    def start(self, spawn: Spawn) -> None:
        """Start sending (its tasks made by ``spawn``)."""
        ...

    async def stop(self) -> None:
        """Stop sending and release what it holds."""
        ...


class Backoff:
    """The wait before each reconnect of a push: 1 s, doubling to ``MAX_BACKOFF_S``; from 1 s again once a
    connection has been live for ``STABLE_LIVE_S`` (it had recovered)."""

    def __init__(self) -> None:
        self._next_s = 1.0
        self._live_since: float | None = None

    def live(self) -> None:
        """A connection is up (it is live from now)."""
        self._live_since = time.monotonic()

    def failed(self) -> float:
        """A connection failed or could not be made: the seconds to wait before the next try."""
        if self._live_since is not None and time.monotonic() - self._live_since >= STABLE_LIVE_S:
            self._next_s = 1.0
        self._live_since = None
        wait_s, self._next_s = self._next_s, min(self._next_s * 2, MAX_BACKOFF_S)
        return wait_s


def recording_path(name: str, recordings_dir: Path) -> Path:
    """Where a recording named by the API goes: ``name`` is a file name, or a relative path, inside
    ``recordings_dir``; the directories on the way are created.

    Raises:
        InputError: an absolute path, a ``..`` or an odd name (the message names the rule), a path that leads out
            of ``recordings_dir`` (through a link), or a recording that exists already.
    """
    parts = name.split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise InputError(f"recording path {name!r} is absolute; give a file name such as show.mp4, or a relative "
                         f"path such as 2026/show.mp4, inside the recordings directory")
    if ".." in parts:
        raise InputError(f"recording path {name!r} must not contain '..'; it names a file inside the recordings "
                         "directory")
    if len(parts) > MAX_RECORDING_DEPTH or not all(RECORDING_PART.match(part) for part in parts):
        raise InputError(f"recording path {name!r} must be up to {MAX_RECORDING_DEPTH} '/'-separated names, each "
                         "1-100 of A-Z a-z 0-9 . _ - starting with a letter or digit")
    if not name.lower().endswith(".mp4"):
        raise InputError(f"recording path {name!r} must end in .mp4")
    try:
        recordings_dir.mkdir(parents=True, exist_ok=True)
        directory = recordings_dir.resolve()
        for part in parts[:-1]:
            directory = directory / part
            if directory.is_symlink():  # it could lead anywhere: the recordings stay inside the directory
                raise InputError(f"recording path {name!r} passes through a link ({part}); links are not followed")
            directory.mkdir(exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the directory for recording {name!r}: {exc.strerror}") from exc
    target = directory / parts[-1]
    if target.exists() or target.is_symlink():
        raise InputError(f"recording {name} already exists; choose a new file name")
    return target


def reach_ingest(url: str, timeout_s: float = 5.0) -> None:
    """Open and close a TCP connection to an RTMP URL's host, so an ingest that is down is found at once, without
    starting a push process (blocking in a socket call does not hold the interpreter lock).

    Raises:
        OSError: the host cannot be reached (the message names it, never the stream key).
    """
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "rtmps" else 1935)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise OSError(f"cannot reach the ingest at {host}:{port}: {exc.strerror or exc}") from exc


def check_target(kind: str, target: str) -> str:
    """Validate an output target.

    Raises:
        InputError: an RTMP URL that is not rtmp(s)://host/app/key, or a recording path that is not a new .mp4.
    """
    if kind == "rtmp":
        if len(target) > MAX_URL_CHARS or not RTMP_URL.match(target):
            raise InputError("RTMP url must look like rtmp://host[:port]/app/stream-key (or rtmps://), in printable "
                             f"ASCII without spaces, at most {MAX_URL_CHARS} characters")
        return target
    if kind == "record":
        path = Path(target)
        if path.suffix.lower() != ".mp4":
            raise InputError(f"recording path {target!r} must end in .mp4")
        if not path.parent.is_dir():
            raise InputError(f"recording directory {path.parent} does not exist")
        if path.exists():
            raise InputError(f"recording {target} already exists; choose a new file name")
        return str(path)
    raise InputError(f"output kind {kind!r} must be 'rtmp', 'record', 'whip' or 'janus'")


def describe_write_error(exc: BaseException) -> str:
    """A write error as the operator should read it: a full disk says "disk full", not "[Errno 28] …"."""
    reasons = {errno.ENOSPC: "disk full: no space left on device",
               errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large: the file system's or the process's file size limit"}
    code = exc.errno if isinstance(exc, OSError) else None
    return reasons.get(code or 0, str(exc))


class StreamOutput:
    """One running output of one session."""

    def __init__(self, output_id: str, session_id: str, kind: str, target: str, video: MediaStreamTrack,
                 audio: MediaStreamTrack, frame_size: tuple[int, int], fps: int, *,
                 on_state: Callable[[StreamOutput], None] | None = None) -> None:
        self.output_id = output_id
        self.session_id = session_id
        self.kind = kind
        self.target = check_target(kind, target)
        self.fps = fps
        self.width, self.height = frame_size
        self.state = "starting"
        self.error: str | None = None
        self.connects = 0
        self.reconnects = 0
        self.video_frames = 0
        self.audio_frames = 0
        self.dropped = 0
        self.repeated = 0  # frames filled with the picture before them, to keep the video constant-rate
        self.started_at = time.time()
        self._video, self._audio = video, audio
        self._queue: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"twincast-output-{output_id}", daemon=True)
        self._readers: list[asyncio.Task[Any]] = []
        self._scratch: Path | None = None  # the recording's temporary file while it is written
        self._backoff = Backoff()  # told when the current connection or file was opened
        self._on_state = on_state  # called on the event loop after each state change
        self._loop: asyncio.AbstractEventLoop | None = None

    def _set_state(self, state: str, error: str | None = None) -> None:
        """Change state (on the encoder thread) and announce it on the event loop."""
        self.state, self.error = state, error
        if self._on_state is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._on_state, self)

    def describe(self) -> OutputStats:
        """For the API and stats; the stream key is masked."""
        return {"id": self.output_id, "session": self.session_id, "kind": self.kind,
                "target": mask_url(self.target) if self.kind == "rtmp" else self.target, "state": self.state,
                "error": self.error, "connects": self.connects, "reconnects": self.reconnects,
                "video_frames": self.video_frames, "audio_frames": self.audio_frames, "dropped": self.dropped,
                "repeated": self.repeated}

    def start(self, spawn: Spawn) -> None:
        """Start the encoder thread and the two track readers (as tasks made by ``spawn``)."""
        self._loop = asyncio.get_running_loop()
        self._thread.start()
        self._readers = [spawn(self._read(self._video, "video"), f"output-{self.output_id}-video"),
                         spawn(self._read(self._audio, "audio"), f"output-{self.output_id}-audio")]

    async def stop(self) -> None:
        """Stop reading, finish the file or close the connection, and wait for the thread."""
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        self._video.stop()
        self._audio.stop()
        self._stop.set()
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30.0)

    async def _read(self, track: MediaStreamTrack, kind: str) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self._offer(kind, frame)

    def _offer(self, kind: str, frame: Any) -> None:
        while True:
            try:
                self._queue.put_nowait((kind, frame))
                return
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.dropped += 1

    def _write_picture(self, container: Any, video: Any, pixels: Any, slot: int) -> None:
        """Encode one yuv420p picture at frame slot ``slot`` (pts in the 90 kHz clock of the tracks)."""
        picture = av.VideoFrame.from_ndarray(pixels, format="yuv420p")
        picture.time_base = Fraction(1, 90_000)
        picture.pts = slot * 90_000 // self.fps
        for packet in video.encode(picture):
            container.mux(packet)

    def _scrub(self, text: str) -> str:
        """FFmpeg's messages quote the URL: mask its stream key before it is shown or logged."""
        return text.replace(self.target, mask_url(self.target)) if self.kind == "rtmp" else text

    # --- encoder thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream_once()
                break  # a clean stop
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                if self.kind == "record":
                    self._recording_failed(exc)
                    return
                backoff_s = self._backoff.failed()
                message = self._scrub(str(exc))
                self.reconnects += 1
                self._set_state("reconnecting", message)
                log.warning("output %s to %s: %s; reconnecting in %.0f s", self.output_id, mask_url(self.target),
                            message, backoff_s)
                deadline = time.monotonic() + backoff_s
                while time.monotonic() < deadline and not self._stop.is_set():
                    with contextlib.suppress(queue.Empty):
                        self._queue.get(timeout=0.1)  # drop frames while disconnected: latency must not grow
        if self.state != "failed":
            self._set_state("stopped", self.error)

    def _stream_once(self) -> None:
        if self.kind != "record":
            self._push_once()
            return
        fd, scratch = tempfile.mkstemp(prefix=".recording-", suffix=".mp4", dir=Path(self.target).parent)
        os.close(fd)
        self._scratch = Path(scratch)
        self._encode(scratch, "mp4", FRAGMENTED_MP4_OPTIONS)
        os.replace(scratch, self.target)
        self._scratch = None

    def _push_once(self) -> None:
        """One connection to the RTMP ingest: FLV encoded here, sent by a child process (``stream.rtmp_push``)
        that alone waits on the network; it is ``live`` once the ingest has taken the header.

        Raises:
            OSError: the push ended (the message says why: no answer, a stall, or the ingest's error).
        """
        reach_ingest(self.target)
        pusher = RtmpPusher(self.target, on_live=self._went_live)
        try:
            self._encode(pusher.stdin, "flv", {}, announce=False)
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            pusher.close(timeout_s=1.0)
            raise OSError(pusher.failure()) from exc
        pusher.close()

    def _went_live(self) -> None:
        """The ingest took the header (called on the push's monitor thread)."""
        self._backoff.live()
        self._set_state("live")

    def _encode(self, destination: str | IO[bytes], container_format: str, options: dict[str, str], *,
                announce: bool = True) -> None:
        """Open ``destination``, encode frames from the queue until stopped, flush and close it; ``announce``
        sets the output's state once the header is written (an RTMP push announces itself when the ingest has it).

        Raises:
            av.error.FFmpegError, OSError, ValueError: opening, writing or closing failed (the first error is
                the one raised: closing a file that could not be written fails too).
        """
        container = av.open(destination, mode="w", format=container_format, options=options)
        self.connects += 1
        try:
            video = container.add_stream("libx264", rate=self.fps)
            video.width, video.height, video.pix_fmt = self.width, self.height, "yuv420p"
            video.bit_rate = VIDEO_BITRATE
            gop = str(GOP_S * self.fps)
            video.options = {"preset": "veryfast", "tune": "zerolatency", "g": gop, "keyint_min": gop,
                             "sc_threshold": "0", "bf": "0"}
            audio = container.add_stream("aac", rate=48_000, layout="mono")
            audio.bit_rate = AUDIO_BITRATE
            container.start_encoding()  # opens the file (or the pipe to the push) and writes the header
            if announce:
                self._backoff.live()
                self._set_state("recording" if self.kind == "record" else "live")
            self._pump(container, video, audio)
            for packet in video.encode(None):
                container.mux(packet)
            for packet in audio.encode(None):
                container.mux(packet)
        except (av.error.FFmpegError, OSError, ValueError):
            with contextlib.suppress(av.error.FFmpegError, OSError, ValueError):
                container.close()  # writes the trailer, which fails the same way; the file is closed regardless
            raise
        container.close()

    def _recording_failed(self, exc: BaseException) -> None:
        """The recording cannot go on: keep what of it is whole, stop reading, say what happened and where the
        part that was recorded is (on the encoder thread)."""
        reason = describe_write_error(exc)
        recorded_s = time.time() - self.started_at
        kept = self._keep_partial()
        self._set_state("failed", f"{reason}, after {recorded_s:.0f} s of recording; {kept}")
        log.error("recording %s failed: %s (%s)", self.target, reason, kept)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop_reading)

    def _keep_partial(self) -> str:
        """Cut the scratch file back to its last whole fragment and rename it ``NAME.partial.mp4`` beside the
        target (never the target's own name: that is for finished recordings); returns what became of it."""
        scratch, self._scratch = self._scratch, None
        if scratch is None or not scratch.exists():
            return "no file was written"
        partial = Path(self.target).with_suffix(".partial.mp4")
        try:
            whole_bytes = whole_fragments_bytes(scratch)
            if whole_bytes == 0:
                scratch.unlink()
                return "nothing playable had been written, so no file is kept"
            os.truncate(scratch, whole_bytes)
            if partial.exists():
                return f"the {whole_bytes / 1e6:.1f} MB recorded is kept, playable, in {scratch}"
            os.replace(scratch, partial)
        except OSError as exc:
            return f"the partial file {scratch} could not be cut back to its whole fragments ({exc.strerror})"
        return f"the {whole_bytes / 1e6:.1f} MB recorded is kept, playable, in {partial}"

    def _stop_reading(self) -> None:
        """Stop the track readers of an output whose thread has ended (on the event loop)."""
        for reader in self._readers:
            reader.cancel()
        self._video.stop()
        self._audio.stop()

    def _pump(self, container: Any, video: Any, audio: Any) -> None:
        origin_s: float | None = None  # one origin for both streams keeps them in sync in the file
        last: tuple[int, Any] | None = None  # (frame slot, yuv420p picture) of the last video frame written
        while not self._stop.is_set():
            try:
                kind, frame = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            time_s = float(frame.pts * frame.time_base)
            origin_s = time_s if origin_s is None else origin_s
            if time_s < origin_s:
                continue
            if kind == "video":
                slot = round((time_s - origin_s) * self.fps)
                if last is not None and slot <= last[0]:
                    continue  # a slot already written
                pixels = frame.to_ndarray()
                if last is not None and slot - last[0] - 1 <= MAX_FILL_S * self.fps:
                    for missing in range(last[0] + 1, slot):
                        self._write_picture(container, video, last[1], missing)
                        self.repeated += 1
                self._write_picture(container, video, pixels, slot)
                self.video_frames += 1
                last = (slot, pixels)
            else:
                sound = av.AudioFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name,
                                                   layout=frame.layout.name)
                sound.sample_rate = frame.sample_rate
                sound.pts = round((time_s - origin_s) * frame.sample_rate)
                sound.time_base = Fraction(1, frame.sample_rate)
                for packet in audio.encode(sound):
                    container.mux(packet)
                self.audio_frames += 1
