"""Measure a live twin's render rate and CPU use: `twincast demo` (or serve) with 0, 1, … WHEP viewers.

Run:  .venv/bin/python -m bench.serve_cpu [--seconds 20] [--viewers 0,1] [--encode shared,per-viewer]
                                          [--model RUN_OR_ONNX --avatar PACK]

With several viewers the server's CPU per extra viewer is what each viewer costs: with ``--encode per-viewer`` its
own encoders (VP8 and Opus, one pair per viewer in aiortc), with ``shared`` (the default) only packetizing and
sending the session's once-encoded packets (stream.encode_once). Each mode is measured on a server of its own,
one after the other in the same run. The viewers all decode in this process, on the same cores.

The server runs as its own process; its CPU time is read from /proc. The viewer (an aiortc WHEP client that
decodes VP8 and Opus) runs in this process, so its CPU cost is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

from stream.whep_client import pull
from tests.helpers import ServerProcess, http

TICKS = os.sysconf("SC_CLK_TCK")
SPEECH = ("Welcome back to the stream. Today we are looking at a jacket that folds into its own pocket. "
          "It comes in four colours, and every size is in stock right now.")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def measure(server: ServerProcess, seconds: float, viewers: int) -> dict[str, Any]:
    assert server.process is not None
    pid = server.process.pid
    http("POST", server.url + "/api/say", {"text": SPEECH})
    start_stats = server.get("/api/stats")[1]
    cpu0, wall0 = cpu_seconds(pid), time.monotonic()
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    frames = 0
    if viewers:
        async def watch() -> list[int]:
            pulled = await asyncio.gather(*(pull(server.url, seconds, keep_video=1) for _ in range(viewers)))
            return [len(media.video_pts) for media in pulled]

        counts = asyncio.run(watch())
        frames = min(counts)
    else:
        time.sleep(seconds)
    wall = time.monotonic() - wall0
    cpu = cpu_seconds(pid) - cpu0
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    stats = server.get("/api/stats")[1]
    http("POST", server.url + "/api/interrupt", {})
    return {
        "viewers": viewers,
        "seconds": round(wall, 1),
        "server_cpu_cores": round(cpu / wall, 2),
        "server_cpu_percent_of_machine": round(100 * cpu / wall / (os.cpu_count() or 1), 1),
        "viewer_cpu_cores": round(
            (client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime) / wall, 2),
        "render_fps": stats["fps"],
        "render_ms_p50": stats["render_ms_p50"],
        "render_ms_p99": stats["render_ms_p99"],
        "late_frames": stats["late_frames"] - start_stats["late_frames"],
        "repeated_frames": stats["repeated_frames"] - start_stats["repeated_frames"],
        "received_fps": round(frames / seconds, 2) if viewers else None,  # the slowest viewer's
        "engine": stats["engine"]["engine"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--viewers", default="0,1", help="viewer counts to measure, e.g. 0,1,2,4")
    parser.add_argument("--encode", default="shared", help="encode modes to compare: shared, per-viewer or both")
    parser.add_argument("--model", help="serve this artifact instead of the demo")
    parser.add_argument("--avatar", help="with --model: the avatar pack")
    args = parser.parse_args()
    command = ["serve", "--model", args.model, "--avatar", args.avatar] if args.model else ["demo"]
    rows = []
    for mode in args.encode.split(","):
        with ServerProcess(*command, "--port", "0", "-q", env={"TWINCAST_SERVE_ENCODE": mode}) as server:
            time.sleep(3.0)  # let warm-up effects settle
            rows += [{"encode": mode, **measure(server, args.seconds, int(viewers))}
                     for viewers in args.viewers.split(",")]
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
