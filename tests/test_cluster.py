"""Twins across render nodes on Ray: ``twincast cluster --workers 2`` (a local Ray, two CPU render nodes with the
tiny twin, capacity 2 each) run as a process, as a user runs it; the tests place twins, watch one through the
front door, kill a node's process as a crash would, and shut it all down.

One cluster for the module (Ray starts slowly on two cores); the tests run in file order and each one makes the
twins it needs when an earlier one did not.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ServerProcess, http, measured, wait_until

pytestmark = pytest.mark.integration

TWINS = ("t1", "t2", "t3", "t4")
TURN_URL = "turn:127.0.0.1:3478"  # never contacted: the test checks the credentials are handed out
TURN_SECRET = "cluster-test-turn-secret-0123456789"
RECOVERY_DEADLINE_S = 120.0  # a replacement node: a new Ray worker process, the runtime built, the engine timed


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc: children, their children, …)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pids: set[int]) -> set[int]:
    """Those of ``pids`` that still run (zombies, already dead, do not count)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


@pytest.fixture(scope="module")
def cluster(pack: Path, artifact: Path) -> Iterator[ServerProcess]:
    """``twincast cluster --workers 2 --capacity 2`` with the tiny twin on a free loopback port."""
    turn = {"TWINCAST_SERVE_TURN_URLS": TURN_URL, "TWINCAST_SERVE_TURN_SECRET": TURN_SECRET}
    with ServerProcess("cluster", "--workers", "2", "--twin", f"tiny={pack},{artifact}", "--capacity", "2",
                       "--threads", "1", "--pose", "still", "--port", "0", startup_s=240, env=turn) as process:
        yield process


def state(cluster: ServerProcess) -> dict[str, Any]:
    """``GET /api/cluster``."""
    status, body = cluster.get("/api/cluster")
    assert status == 200, body
    assert isinstance(body, dict)
    return body


def place_twins(cluster: ServerProcess) -> dict[str, Any]:
    """Make sure t1..t4 are live (placing those missing); returns the cluster's state."""
    live = {twin["name"] for twin in state(cluster)["twins"]}
    for name in TWINS:
        if name not in live:
            status, body = cluster.post("/api/cluster/twins", {"name": name})
            assert status == 201, body
    return state(cluster)


async def watch(url: str, session: str) -> tuple[str | None, int, int]:
    """One aiortc WHEP viewer through the front door: wait (with a deadline) for 5 video frames, hang up with a
    DELETE through the front door; returns its Location, the frames received and the DELETE's status."""
    from stream.whep_client import WhepViewer

    viewer = WhepViewer(url, session=session, keep_video=2)
    deleted = 0
    async with aiohttp.ClientSession() as client:
        try:
            await viewer.connect(client)
            deadline = time.monotonic() + 30
            # the media has an event for the first frame only: the count is polled, with a deadline
            while len(viewer.media.video_arrival_s) < 5 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            async with client.delete(f"{url}{viewer.location}") as response:
                deleted = response.status
        finally:
            await viewer.hang_up(client, delete=False)
    return viewer.location, len(viewer.media.video_arrival_s), deleted


def test_nodes_report_their_address_and_measured_capacity(cluster: ServerProcess) -> None:
    nodes = state(cluster)["nodes"]
    assert [node["alive"] for node in nodes] == [True, True]
    for node in nodes:
        assert node["address"].startswith("http://")
        assert node["capacity"] == 2 and node["configured_capacity"] == 2
        assert isinstance(node["measured_capacity"], int) and node["measured_capacity"] >= 0
        assert set(node["ms_per_call"]) == {"1", "2", "4", "8"}
        status, health = http("GET", node["address"] + "/healthz")
        assert status == 200 and health["status"] == "ok"


def test_four_twins_spread_two_and_two_and_a_fifth_is_refused(cluster: ServerProcess) -> None:
    placed = place_twins(cluster)
    assert sorted(len(node["twins"]) for node in placed["nodes"]) == [2, 2]
    assert {twin["name"]: twin["state"] for twin in placed["twins"]} == dict.fromkeys(TWINS, "live")
    status, body = cluster.post("/api/cluster/twins", {"name": "t5"})
    assert status == 503, body
    assert body["type"] == "ClusterFullError" and "capacity" in body["error"]
    assert body["limit"] == {"name": "node_capacity", "value": 4}
    assert [(c["capacity"], c["twins"]) for c in body["capacities"]] == [(2, 2), (2, 2)]
    assert "t5" not in {twin["name"] for twin in state(cluster)["twins"]}
    status, body = cluster.post("/api/cluster/twins", {"name": "t1"})
    assert status == 400 and "exists already" in body["error"]
    status, body = cluster.post("/api/cluster/twins", {"name": "x", "twin": "nobody"})
    assert status == 404 and "nobody" in body["error"]
    status, body = http("POST", cluster.url + "/api/cluster/twins", {"name": "t6"})
    assert status == 401, body


def test_a_viewer_through_the_front_door_receives_frames(cluster: ServerProcess) -> None:
    place_twins(cluster)
    location, frames, deleted = asyncio.run(watch(cluster.url, "t1"))
    assert location is not None and location.startswith("/whep/t1/")
    assert frames >= 5
    assert deleted == 204
    status, body = http("POST", cluster.url + "/whep/nobody", "v=0\r\n", content_type="application/sdp")
    assert status == 404 and "nobody" in body["error"]


def test_viewers_get_the_nodes_turn_credentials_through_the_front_door(cluster: ServerProcess) -> None:
    """Viewers behind NAT need TURN: the front door hands out the nodes' ICE servers without the operator token,
    and passes the WHEP answer's Link headers on."""
    from aiortc import RTCPeerConnection

    place_twins(cluster)
    status, body = http("GET", cluster.url + "/api/ice-servers")
    assert status == 200, body
    (server,) = [entry for entry in body["iceServers"] if TURN_URL in entry["urls"]]
    assert ":" in server["username"] and server["credential"]
    assert TURN_SECRET not in str(body)

    async def offer_through_front_door() -> tuple[int, list[str], str]:
        peer = RTCPeerConnection()
        peer.addTransceiver("video", direction="recvonly")
        peer.addTransceiver("audio", direction="recvonly")
        await peer.setLocalDescription(await peer.createOffer())
        async with aiohttp.ClientSession() as client:
            async with client.post(cluster.url + "/whep/t1", data=peer.localDescription.sdp,
                                   headers={"Content-Type": "application/sdp"}) as response:
                links, location = response.headers.getall("Link", []), response.headers.get("Location", "")
                status = response.status
            if location:
                async with client.delete(cluster.url + location):
                    pass
        await peer.close()
        return status, links, location

    status, links, location = asyncio.run(offer_through_front_door())
    assert status == 201 and location.startswith("/whep/t1/")
    assert any(TURN_URL in link and 'rel="ice-server"' in link and "username=" in link for link in links), links


def test_a_killed_node_s_twins_go_live_again_and_a_viewer_re_posting_gets_frames(cluster: ServerProcess) -> None:
    before = place_twins(cluster)
    victim = next(node for node in before["nodes"] if "t1" in node["twins"] and node["alive"])
    moved = set(victim["twins"])
    killed_at = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)

    def recovered() -> dict[str, Any] | None:
        now = state(cluster)
        nodes = {node["name"]: node for node in now["nodes"]}
        twins = {twin["name"]: twin for twin in now["twins"]}
        all_live = all(twins[name]["state"] == "live" and nodes[twins[name]["node"]]["alive"] for name in TWINS)
        return now if not nodes[victim["name"]]["alive"] and all_live else None

    after = wait_until(recovered, RECOVERY_DEADLINE_S, every_s=0.5, what="the dead node's twins live again")
    recovery_s = time.monotonic() - killed_at
    dead = next(node for node in after["nodes"] if node["name"] == victim["name"])
    assert "died" in dead["died"] or "answer" in dead["died"]
    for twin in after["twins"]:
        if twin["name"] in moved:
            assert twin["node"] != victim["name"] and twin["moves"] == 1
    assert sum(len(node["twins"]) for node in after["nodes"] if node["alive"]) == len(TWINS)
    location, frames, deleted = asyncio.run(watch(cluster.url, "t1"))
    assert location is not None and frames >= 5 and deleted == 204
    measured("cluster_recovery", recovery_s=recovery_s, reconnected_frames=frames)


def test_shutdown_leaves_no_ray_process(cluster: ServerProcess) -> None:
    process = cluster.process
    assert process is not None and process.poll() is None
    below = descendants(process.pid)
    assert below, "the cluster runs Ray's processes below it"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0
    wait_until(lambda: not running(below), 30, every_s=0.2, what="every Ray process below the cluster gone")
    assert any("shutting down" in line for line in cluster.lines)
