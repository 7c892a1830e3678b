"""A real Janus (Debian's ``janus``) with only its VideoRoom plugin and HTTP transport, on a free loopback port,
for the SFU tests and the SFU benchmark; and an aiortc VideoRoom subscriber that reads a publisher from it.

The config is written to a temporary directory: the HTTP API on 127.0.0.1 only (no admin API, no websockets or
other transports), the VideoRoom plugin alone (the plugins and transports folders hold links to those two
libraries only), ICE on this machine's host addresses only (the ones aiortc gathers: no STUN, no TURN, no IPv6),
RTP on a port range of its own. Its log is kept in ``log``.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aioice.ice import get_host_addresses
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from stream.janus_output import VIDEOROOM, JanusApi
from tests.stream.rtmp_ingest import free_port

LIBRARIES = Path("/usr/lib/x86_64-linux-gnu/janus")
MISSING = "Debian's janus is missing: apt-get install janus (CI and `make test` as root install it)"


def free_port_range(count: int = 200) -> tuple[int, int]:
    """A UDP port range of ``count`` ports starting at a free port (probably all free: the first one is)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        low = int(probe.getsockname()[1])
    low = min(low, 65535 - count)
    return low, low + count - 1


class JanusServer:
    """Janus in the foreground with a generated config under ``root``; ``url(room)`` is a ``janus://`` target."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        if shutil.which("janus") is None or not (LIBRARIES / "plugins" / "libjanus_videoroom.so").exists():
            raise AssertionError(MISSING)
        self.root = root
        self.port = port or free_port()
        self.log = root / "janus.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        """The config folder, and plugin and transport folders holding only the VideoRoom and HTTP libraries."""
        for folder, library in (("plugins", "libjanus_videoroom.so"), ("transports", "libjanus_http.so")):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
            link = self.root / folder / library
            if not link.exists():
                link.symlink_to(LIBRARIES / folder / library)
        conf = self.root / "conf"
        conf.mkdir(exist_ok=True)
        low, high = free_port_range()
        addresses = ",".join(get_host_addresses(use_ipv4=True, use_ipv6=False)) or "127.0.0.1"
        (conf / "janus.jcfg").write_text(f"""
general: {{
  configs_folder = "{conf}"
  plugins_folder = "{self.root}/plugins"
  transports_folder = "{self.root}/transports"
  events_folder = "{self.root}/none"
  loggers_folder = "{self.root}/none"
  debug_level = 4
  session_timeout = 60
}}
media: {{ rtp_port_range = "{low}-{high}" }}
nat: {{ nice_debug = false ice_enforce_list = "{addresses}" }}
plugins: {{}}
transports: {{}}
events: {{ broadcast = false }}
""")
        (conf / "janus.transport.http.jcfg").write_text(f"""
general: {{ json = "plain" base_path = "/janus" http = true port = {self.port} ip = "127.0.0.1" https = false }}
admin: {{ admin_http = false admin_https = false }}
""")
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: { }\n")

    @property
    def api_url(self) -> str:
        """Janus' REST API."""
        return f"http://127.0.0.1:{self.port}/janus"

    def url(self, room: int, query: str = "") -> str:
        """The ``janus://`` target of ``room``."""
        return f"janus://127.0.0.1:{self.port}/{room}" + (f"?{query}" if query else "")

    def start(self) -> JanusServer:
        """Start Janus and wait until its HTTP API answers."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(["janus", "-F", str(self.root / "conf"), "-C",
                                             str(self.root / "conf" / "janus.jcfg"), "-o"],
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"Janus did not start:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        """The end of Janus' log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else "(no log)"

    def stop(self) -> None:
        """Stop Janus (killed: the SFU goes away at once, as a crash does)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> JanusServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


async def participants(http: aiohttp.ClientSession, api_url: str, room: int) -> list[dict[str, Any]]:
    """The room's participants (``listparticipants``), an empty list when the room does not exist."""
    api = JanusApi(http, api_url)
    await api.open()
    try:
        handle = await api.attach(VIDEOROOM)
        exists, _ = await api.message(handle, {"request": "exists", "room": room})
        if not exists.get("exists"):
            return []
        found, _ = await api.message(handle, {"request": "listparticipants", "room": room})
        return list(found.get("participants", []))
    finally:
        await api.close()


@dataclass
class Subscriber:
    """An aiortc VideoRoom subscriber of one publisher (its ``feed`` id); counts what arrives.

    ``decode``: read the decoded frames (counted, their sizes kept in ``sizes``), or leave them unread (the
    benchmark, which counts RTP packets, ``packets``, and stubs the decoders out in its own process).
    """

    api_url: str
    room: int
    feed: int
    pin: str | None = None
    decode: bool = True
    video_frames: int = 0
    audio_frames: int = 0
    sizes: set[tuple[int, int]] = field(default_factory=set)
    peer: RTCPeerConnection | None = None
    _api: JanusApi | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    async def join(self, http: aiohttp.ClientSession) -> None:
        """Join as a subscriber: Janus offers (``attached``), the answer goes back with ``start``."""
        api = self._api = JanusApi(http, self.api_url)
        await api.open()
        handle = await api.attach(VIDEOROOM)
        pin = {"pin": self.pin} if self.pin else {}
        _, jsep = await api.message(handle, {"request": "join", "ptype": "subscriber", "room": self.room,
                                             "streams": [{"feed": self.feed}], **pin})
        assert jsep is not None and jsep["type"] == "offer", jsep
        peer = self.peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer.on("track", self._on_track)
        await peer.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="offer"))
        await peer.setLocalDescription(await peer.createAnswer())
        await api.message(handle, {"request": "start"}, {"type": "answer", "sdp": peer.localDescription.sdp})

    def _on_track(self, track: MediaStreamTrack) -> None:
        if self.decode:
            self._tasks.append(asyncio.create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame: Any = await track.recv()
                if track.kind == "video":
                    self.video_frames += 1
                    self.sizes.add((frame.width, frame.height))
                else:
                    self.audio_frames += 1

    async def packets(self) -> int:
        """RTP packets the receivers took so far (video and audio)."""
        packets = 0
        if self.peer is not None:
            for receiver in self.peer.getReceivers():
                for entry in (await receiver.getStats()).values():
                    if entry.type == "inbound-rtp":
                        packets += entry.packetsReceived
        return packets

    async def leave(self) -> None:
        """Hang up: close the peer, destroy the Janus session."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.peer is not None:
            await self.peer.close()
        if self._api is not None:
            await self._api.close()
