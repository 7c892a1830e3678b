"""SFU fan-out vs direct viewers: the twincast server's CPU and memory with N subscribers reading a session from a
Janus VideoRoom (twincast publishes once) against N direct WHEP viewers (twincast sends to each).

Run:  PYTHONPATH=. .venv/bin/python -m bench.sfu [--subscribers 1,10,50] [--seconds 15] [--encode per-viewer]
      [--model RUN --avatar PACK]

Debian's ``janus`` runs on loopback (``tests.stream.janus_sfu``), ``twincast demo`` (or serve) as its own process,
with its viewer limits raised to the largest N. For each N: a Janus output is added through the API and N
subscribers join the room; then the output is removed and N WHEP viewers connect to twincast instead. Over the
same window the twincast process' CPU (user + system time per wall second, from /proc) and RSS are read, and
Janus' CPU beside it.

The audience runs in a separate process (``--audience``), so its CPU is not twincast's. It does not decode: its
aiortc receivers get a decoder that only counts the encoded frames and their bytes (``_count_only``), so 50
subscribers fit on a small machine; RTP packets are counted from the receivers' stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from av.frame import Frame

from bench.serve_cpu import SPEECH, cpu_seconds
from tests.helpers import ServerProcess, wait_until
from tests.stream.janus_sfu import JanusServer, Subscriber, participants

ROOM = 7001
JOIN_BATCH = 10  # audience members that join at once
READY_TIMEOUT_S = 180.0


class _CountingDecoder(Decoder):
    """Stands in for aiortc's decoders in the audience process: counts encoded frames and bytes, decodes nothing."""

    video_frames = 0
    encoded_bytes = 0

    def __init__(self, video: bool) -> None:
        self.video = video

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        _CountingDecoder.video_frames += self.video
        _CountingDecoder.encoded_bytes += len(encoded_frame.data)
        return []


def _count_only() -> None:
    """Make this process' aiortc receivers count frames instead of decoding them."""
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.get_decoder = lambda codec: _CountingDecoder(codec.mimeType.lower().startswith("video/"))


async def _packets(peer: RTCPeerConnection) -> int:
    """RTP packets a peer's receivers took so far."""
    total = 0
    for receiver in peer.getReceivers():
        total += sum(entry.packetsReceived for entry in (await receiver.getStats()).values()
                     if entry.type == "inbound-rtp")
    return total


async def _join(kind: str, count: int, server_url: str, janus_url: str, session: str,
                http: aiohttp.ClientSession) -> tuple[list[RTCPeerConnection], list[Any]]:
    """Connect ``count`` Janus subscribers (``kind`` janus) or WHEP viewers (``direct``); returns their peers and
    what to hang up."""
    from stream.whep_client import WhepViewer

    if kind == "janus":
        feed = next(int(p["id"]) for p in await participants(http, janus_url, ROOM)
                    if p.get("display") == session and p.get("publisher"))
        subscribers: list[Subscriber] = []
        for start in range(0, count, JOIN_BATCH):
            batch = [Subscriber(janus_url, ROOM, feed, decode=False) for _ in range(min(JOIN_BATCH, count - start))]
            await asyncio.gather(*(member.join(http) for member in batch))
            subscribers += batch
        return [member.peer for member in subscribers if member.peer is not None], subscribers
    viewers: list[WhepViewer] = []
    for start in range(0, count, JOIN_BATCH):
        watching = [WhepViewer(server_url, keep_video=1) for _ in range(min(JOIN_BATCH, count - start))]
        await asyncio.gather(*(member.connect(http) for member in watching))
        viewers += watching
    return [member.peer for member in viewers], viewers


async def _audience(kind: str, count: int, seconds: float, server_url: str, janus_url: str, session: str) -> None:
    """The audience process: join, say ``ready`` once every member receives, count for ``seconds``, report, and
    hang up when told to (a line on stdin: the server is measured with the audience still there)."""
    _count_only()
    async with aiohttp.ClientSession() as http:
        peers, members = await _join(kind, count, server_url, janus_url, session, http)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while min([await _packets(peer) for peer in peers]) == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"not every {kind} audience member received within {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.5)
        print("ready", flush=True)
        usage0, frames0, bytes0 = resource.getrusage(resource.RUSAGE_SELF), _CountingDecoder.video_frames, \
            _CountingDecoder.encoded_bytes
        packets0 = [await _packets(peer) for peer in peers]
        started = time.monotonic()
        await asyncio.sleep(seconds)
        packets = [await _packets(peer) - before for peer, before in zip(peers, packets0, strict=True)]
        wall = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({
            "packets_per_s_min": round(min(packets) / wall, 1), "packets_per_s_mean": round(sum(packets) / len(packets)
                                                                                          / wall, 1),
            "video_frames_per_s_each": round((_CountingDecoder.video_frames - frames0) / count / wall, 1),
            "kbit_per_s_each": round((_CountingDecoder.encoded_bytes - bytes0) * 8 / 1000 / count / wall, 1),
            "audience_cpu_cores": round((usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime) / wall,
                                        2)}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for member in members:
            await (member.leave() if kind == "janus" else member.hang_up(http))


def _rss_mb(pid: int) -> float:
    """A process' resident memory, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def measure(server: ServerProcess, janus: JanusServer, kind: str, count: int, seconds: float) -> dict[str, Any]:
    """One row: ``count`` audience members of ``kind`` (janus or direct); twincast's and Janus' CPU meanwhile."""
    assert server.process is not None and janus.process is not None
    session = server.get("/api/stats")[1]["default_session"]
    output_id = None
    if kind == "janus":
        status, output = server.post("/api/outputs", {"kind": "janus", "url": janus.url(ROOM)})
        assert status == 201, output
        output_id = output["id"]
        wait_until(lambda: next(o for o in server.get("/api/outputs")[1]["outputs"] if o["id"] == output_id)["state"]
                   == "live", 30, what="the Janus output live")
    audience = subprocess.Popen(
        [sys.executable, "-m", "bench.sfu", "--audience", kind, "--count", str(count), "--seconds", str(seconds),
         "--server", server.url, "--janus", janus.api_url, "--session", session],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert audience.stdout is not None and audience.stdin is not None
    try:
        line = audience.stdout.readline()
        assert line.strip() == "ready", f"the {kind} audience did not get ready: {line!r}"
        server.post("/api/say", {"text": SPEECH})
        cpu0, janus0, wall0 = cpu_seconds(server.process.pid), cpu_seconds(janus.process.pid), time.monotonic()
        report = json.loads(audience.stdout.readline())
        wall = time.monotonic() - wall0
        cpu, janus_cpu = cpu_seconds(server.process.pid) - cpu0, cpu_seconds(janus.process.pid) - janus0
        resources = server.get("/api/debug/resources")[1]
        stats = server.get("/api/stats")[1]
        row = {"audience": kind, "count": count, "seconds": round(wall, 1),
               "twincast_cpu_cores": round(cpu / wall, 2), "twincast_rss_mb": _rss_mb(server.process.pid),
               "twincast_peers": resources["peers_held"], "twincast_viewers": stats["viewers"],
               "janus_cpu_cores": round(janus_cpu / wall, 2) if kind == "janus" else None,
               "render_fps": stats["fps"], "load_avg_1m": round(os.getloadavg()[0], 2), **report}
    finally:
        audience.stdin.write("bye\n")
        audience.stdin.close()
        audience.wait(timeout=120)
        server.post("/api/interrupt", {})
        if output_id is not None:
            server.delete(f"/api/outputs/{output_id}")
    wait_until(lambda: server.get("/api/stats")[1]["viewers"] == 0, 30, what="the viewers gone")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="1,10,50", help="audience sizes to measure, e.g. 1,10,50")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--model", help="serve this artifact instead of the demo")
    parser.add_argument("--avatar", help="with --model: the avatar pack")
    parser.add_argument("--encode", help="the server's encode mode for its direct viewers (serve.encode: shared or "
                        "per-viewer; default: the server's default)")
    parser.add_argument("--audience", choices=("janus", "direct"), help=argparse.SUPPRESS)  # the audience process
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server", help=argparse.SUPPRESS)
    parser.add_argument("--janus", help=argparse.SUPPRESS)
    parser.add_argument("--session", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.audience:
        asyncio.run(_audience(args.audience, args.count, args.seconds, args.server, args.janus, args.session))
        return
    counts = [int(count) for count in args.subscribers.split(",")]
    command = ["serve", "--model", args.model, "--avatar", args.avatar] if args.model else ["demo"]
    limits = {"TWINCAST_SERVE_MAX_VIEWERS": str(max(counts)), "TWINCAST_SERVE_MAX_VIEWERS_PER_SESSION":
              str(max(counts)), "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "1000", "TWINCAST_SERVE_OPERATOR_BURST": "1000"}
    if args.encode:
        limits["TWINCAST_SERVE_ENCODE"] = args.encode
    with tempfile.TemporaryDirectory() as root, JanusServer(Path(root)) as janus, \
            ServerProcess(*command, "--port", "0", "-q", env=limits) as server:
        time.sleep(3.0)  # let warm-up effects settle
        rows = [measure(server, janus, kind, count, args.seconds) for count in counts for kind in ("janus", "direct")]
        encode = server.get("/api/stats")[1]["sessions"][server.get("/api/stats")[1]["default_session"]].get("encode")
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "twin": args.model or "demo", "encode": encode, "rows": rows}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
