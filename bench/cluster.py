"""Twins across Ray render nodes: place N live twins over `twincast cluster --workers W`, then kill a node.

Run:  .venv/bin/python -m bench.cluster --avatar PACK --model twin.onnx [--twins 20] [--workers 2] [--capacity N]

Reports each node's measured capacity (and the configured one, with --capacity), where the twins went, how long
placing them took and which were refused; then, for a while, each node's sessions' frame rate and the frames
shown un-rendered because their render came late (``idle_frames``); then it SIGKILLs the process of the node that
holds the first twin, as a crash would, and times the recovery: the death noticed, the replacement node up, every
twin live again, and a WHEP viewer of a moved twin, re-POSTing through the front door, receiving its first frame.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import time
from typing import Any

import aiohttp

from stream.whep_client import WhepViewer
from tests.helpers import ServerProcess, http


def cluster_state(cluster: ServerProcess) -> dict[str, Any]:
    """``GET /api/cluster``."""
    status, body = cluster.get("/api/cluster")
    if status != 200:
        raise RuntimeError(f"GET /api/cluster answered {status}: {body}")
    result: dict[str, Any] = body
    return result


def place(cluster: ServerProcess, count: int) -> dict[str, Any]:
    """POST ``count`` live twins one after another; the seconds it took and which were refused (and why)."""
    refused: dict[str, str] = {}
    started = time.monotonic()
    for index in range(1, count + 1):
        status, body = cluster.post("/api/cluster/twins", {"name": f"twin-{index:02d}"})
        if status != 201:
            refused[f"twin-{index:02d}"] = f"{status}: {body.get('error') if isinstance(body, dict) else body}"
    seconds = time.monotonic() - started
    state = cluster_state(cluster)
    return {"seconds": round(seconds, 2), "placed": count - len(refused), "refused": len(refused),
            "first_refusal": next(iter(refused.values()), None),
            "per_node": {node["name"]: len(node["twins"]) for node in state["nodes"]}}


def node_rates(cluster: ServerProcess, seconds: float) -> dict[str, Any]:
    """Each node's sessions over ``seconds``: mean frame rate, and late and un-rendered frames in that time."""
    nodes = [node for node in cluster_state(cluster)["nodes"] if node["alive"]]

    def sessions(node: dict[str, Any]) -> dict[str, Any]:
        status, body = http("GET", node["address"] + "/api/stats", headers=cluster.auth)
        if status != 200:
            raise RuntimeError(f"{node['name']} /api/stats answered {status}: {body}")
        result: dict[str, Any] = body["sessions"]
        return result

    before = {node["name"]: sessions(node) for node in nodes}
    time.sleep(seconds)
    rows = {}
    for node in nodes:
        after = sessions(node)
        if not after:
            continue
        rows[node["name"]] = {
            "sessions": len(after),
            "mean_fps": round(sum(s["fps"] for s in after.values()) / len(after), 2),
            "late_frames": sum(s["late_frames"] - before[node["name"]].get(k, s)["late_frames"]
                               for k, s in after.items()),
            "unrendered_frames": sum(s["idle_frames"] - before[node["name"]].get(k, s)["idle_frames"]
                                     for k, s in after.items()),
            "render_ms_p50": max(s["render_ms_p50"] or 0 for s in after.values())}
    return rows


async def first_frame(url: str, twin: str, deadline_s: float) -> float:
    """Re-POST a WHEP viewer of ``twin`` through the front door until one is answered; the monotonic time its
    first video frame arrived."""
    give_up = time.monotonic() + deadline_s
    async with aiohttp.ClientSession() as client:
        while True:
            viewer = WhepViewer(url, session=twin, keep_video=1)
            try:
                await viewer.connect(client)
                await asyncio.wait_for(viewer.media.first_video.wait(), max(1.0, give_up - time.monotonic()))
                return viewer.media.video_arrival_s[0]
            except Exception:
                if time.monotonic() > give_up:
                    raise
                await asyncio.sleep(0.5)
            finally:
                await viewer.hang_up(client)


def recover(cluster: ServerProcess, deadline_s: float = 180.0) -> dict[str, Any]:
    """Kill the process of the node holding the first twin; time the death noticed, the replacement up, every twin
    live again, and a viewer of a moved twin receiving its first frame."""
    state = cluster_state(cluster)
    victim = next(node for node in state["nodes"] if node["alive"] and node["twins"])
    moved = sorted(victim["twins"])
    wall_kill = time.time()
    killed = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    all_live = None
    while time.monotonic() - killed < deadline_s:
        state = cluster_state(cluster)
        if all(twin["state"] == "live" for twin in state["twins"]) and not next(
                node for node in state["nodes"] if node["name"] == victim["name"])["alive"]:
            all_live = time.monotonic() - killed
            break
        time.sleep(0.1)
    viewer_at = asyncio.run(first_frame(cluster.url, moved[0], deadline_s))
    events = {event["kind"]: event["at"] - wall_kill for event in state["events"]
              if event["at"] >= wall_kill and event["kind"] in ("node_died", "node_up")}
    return {"node": victim["name"], "twins_moved": len(moved),
            "noticed_s": round(events["node_died"], 2) if "node_died" in events else None,
            "replacement_up_s": round(events["node_up"], 2) if "node_up" in events else None,  # None: not up yet
            "all_live_s": round(all_live, 2) if all_live is not None else None,
            "viewer_frame_s": round(viewer_at - killed, 2),
            "per_node_after": {node["name"]: len(node["twins"]) for node in state["nodes"] if node["alive"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--avatar", required=True, help="the avatar pack every node loads")
    parser.add_argument("--model", required=True, help="its twin.onnx")
    parser.add_argument("--twins", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--capacity", type=int, help="twins per node (default: measured)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to watch the nodes' frame rates")
    args = parser.parse_args()
    flags = ["--capacity", str(args.capacity)] if args.capacity else []
    load_before = os.getloadavg()
    started = time.monotonic()
    with ServerProcess("cluster", "--workers", str(args.workers), "--twin", f"tiny={args.avatar},{args.model}",
                       "--threads", "1", "--pose", "still", "--port", "0", *flags, startup_s=300) as cluster:
        startup_s = time.monotonic() - started
        nodes = cluster_state(cluster)["nodes"]
        placement = place(cluster, args.twins)
        rates = node_rates(cluster, args.seconds)
        recovery = recover(cluster)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d"), "load_before": [round(x, 2) for x in load_before],
              "load_after": [round(x, 2) for x in os.getloadavg()],
              "command": "python -m bench.cluster " + " ".join(
                  f"--{k} {v}" for k, v in vars(args).items() if v is not None and k not in ("avatar", "model")),
              "startup_s": round(startup_s, 1),
              "nodes": [{k: node[k] for k in ("name", "capacity", "measured_capacity", "ms_per_call", "start_s")}
                        for node in nodes],
              "placement": placement, "rates": rates, "recovery": recovery}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
