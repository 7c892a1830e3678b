"""Churn without leaks: viewers, agent pushes and operator upstreams come and go by the hundred, and the server
ends holding what it held before — peers, relay subscriptions, tasks, threads, file descriptors — with bounded
memory growth (read from ``GET /api/debug/resources``).

Most cycles connect (ICE and DTLS up) and leave at once; a sample waits for media and checks it. Half the viewers
and upstreams hang up with a DELETE, half just close their peer, which the server must notice by itself (their
DTLS close), well before its silent-viewer timeout; one viewer in four hangs up while the server is still
setting its connection up (aiortc could then start a sender after the close, whose RTCP task kept the peer).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription, VideoStreamTrack

from stream.config import ServeConfig
from stream.whep_client import WhepViewer
from tests.helpers import AUTH, ServerProcess

VIEWER_CYCLES = 200
PUSH_CYCLES = 100
UPSTREAM_CYCLES = 100
WARMUP_CYCLES = 20  # before the baseline: the relay's reader, the executor's threads, codecs loaded once
MEDIA_EVERY = 20  # one cycle in this many waits for media and checks it
NOTICE_S = 5.0  # a peer closed without DELETE must be gone by then (the silent-viewer timeout is 10 s)
UNHANDLED = ("Traceback", "Task exception was never retrieved", "Task was destroyed but it is pending")
EXECUTOR_THREADS = 8  # asyncio's default executor (aiortc encodes there) grows lazily up to min(32, cores + 4)
# RSS growth allowed per cycle, from the end of the warm-up to the end of the run, both at rest and after a heap
# trim (``?collect=1``): measured 18-56 kB per viewer cycle, 0-22 kB per push and 4-46 kB per upstream cycle on
# a 2-core machine (busy or not), and 310 kB per upstream cycle when each webcam loaded its own FaceMesh graph.
RSS_PER_CYCLE_BYTES = {"viewer": 150_000, "push": 50_000, "upstream": 120_000}


def generous_limits() -> dict[str, str]:
    """Operator rate limits high enough for a hundred requests a second (where the server has such limits)."""
    names = {field.name for field in dataclasses.fields(ServeConfig)}
    wanted = {"operator_rate_per_s": "10000", "operator_burst": "10000"}
    return {f"TWINCAST_SERVE_{name.upper()}": value for name, value in wanted.items() if name in names}


@pytest.fixture(scope="module")
def churned(pack: Path, artifact: Path) -> Iterator[ServerProcess]:
    """A server of its own, so its counts are this module's alone."""
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env=generous_limits()) as process:
        yield process


@dataclasses.dataclass
class Tracker:
    """Resource snapshots over a churn run: the baseline after the warm-up, RSS every few cycles, the end.

    The baseline and the end are taken at rest (no speech queued or playing), so RSS is compared between two
    quiet moments and not against the engine's first speech.
    """

    http: aiohttp.ClientSession
    url: str
    baseline: dict[str, Any] = dataclasses.field(default_factory=dict)
    rss: list[tuple[int, int]] = dataclasses.field(default_factory=list)  # (cycles done, bytes)

    async def resources(self) -> dict[str, Any]:
        async with self.http.get(self.url + "/api/debug/resources?collect=1", headers=AUTH) as response:
            assert response.status == 200, await response.text()
            return dict(await response.json())

    async def at_rest(self) -> None:
        """Wait until no speech is queued or playing."""
        async def quiet() -> bool:
            stats = await get_json(self.http, self.url + "/api/stats")
            return stats["speaking"] is False and stats["queue"]["speech_frames"] == 0

        await wait_for(quiet, 30, "speech queued by the churn played out")

    async def note(self, cycle: int) -> None:
        """Every 20 cycles from the end of the warm-up (which sets the baseline): RSS."""
        if cycle < WARMUP_CYCLES or cycle % 20:
            return
        if cycle == WARMUP_CYCLES:
            await self.at_rest()
        snapshot = await self.resources()
        if cycle == WARMUP_CYCLES:
            self.baseline = snapshot
        self.rss.append((cycle, snapshot["rss_bytes"]))

    async def settled(self, timeout_s: float = 15.0) -> dict[str, Any]:
        """Wait until the server is at rest, holds no peer and as many tasks and descriptors as at the baseline."""
        await self.at_rest()
        deadline = time.monotonic() + timeout_s
        while True:
            now = await self.resources()
            if (now["peers_held"] == now["peers_alive"] == now["relay_subscriptions"] == 0
                    and now["tasks"] <= self.baseline["tasks"] and now["open_fds"] <= self.baseline["open_fds"]):
                return now
            if time.monotonic() > deadline:
                return now
            await asyncio.sleep(0.2)

def assert_nothing_leaked(tracker: Tracker, end: dict[str, Any], kind: str, cycles: int) -> float:
    """The end state against the baseline; returns the RSS growth per cycle."""
    base = tracker.baseline
    assert end["peers_held"] == end["peers_alive"] == end["peers_unclosed"] == 0, end
    assert end["relay_subscriptions"] == 0, end
    assert end["tasks"] <= base["tasks"], (base["task_kinds"], end["task_kinds"])
    assert end["open_fds"] <= base["open_fds"], (base["fd_kinds"], end["fd_kinds"])
    assert end["threads"] <= base["threads"] + EXECUTOR_THREADS, (base["threads"], end["threads"])
    assert end["os_threads"] <= base["os_threads"] + EXECUTOR_THREADS, (base["os_threads"], end["os_threads"])
    per_cycle = (end["rss_bytes"] - base["rss_bytes"]) / cycles
    assert per_cycle < RSS_PER_CYCLE_BYTES[kind], (per_cycle, tracker.rss, end["rss_bytes"])
    return per_cycle


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], timeout_s: float, what: str) -> float:
    """Poll ``condition`` (a function, or a coroutine function) until it holds; returns the seconds it took
    (AssertionError naming ``what`` after ``timeout_s``)."""
    started = time.monotonic()
    while not await _value(condition()):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def frames_at_least(viewer: WhepViewer, count: int) -> Callable[[], bool]:
    """Whether ``viewer`` has received ``count`` video frames yet."""
    return lambda: len(viewer.media.video_pts) >= count


async def _value(result: Awaitable[bool] | bool) -> bool:
    return await result if inspect.isawaitable(result) else result


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers=AUTH) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def test_viewer_churn_leaks_nothing(churned: ServerProcess) -> None:
    async def churn() -> tuple[dict[str, Any], Tracker, list[float], int]:
        notice_s: list[float] = []
        checked = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            tracker = Tracker(http, churned.url)

            async def no_viewers() -> bool:
                return bool((await get_json(http, churned.url + "/healthz"))["viewers"] == 0)

            for cycle in range(WARMUP_CYCLES + VIEWER_CYCLES):
                viewer = WhepViewer(churned.url, keep_video=5)
                await viewer.connect(http)
                delete = cycle % 2 == 0
                if cycle % 4:  # one in four hangs up (DELETE) while the server is still connecting
                    await asyncio.wait_for(viewer.connected.wait(), 10)
                if cycle % MEDIA_EVERY == MEDIA_EVERY - 1:  # media flows: frames of the session's size
                    await asyncio.wait_for(viewer.media.first_video.wait(), 10)
                    await wait_for(frames_at_least(viewer, 5), 10, "5 video frames")
                    assert viewer.media.video[-1].shape == (256, 256, 3) and viewer.media.video[-1].std() > 5
                    checked += 1
                await viewer.hang_up(http, delete=delete)
                if not delete:
                    notice_s.append(await wait_for(no_viewers, NOTICE_S, "the server notices a closed peer"))
                await tracker.note(cycle + 1)
            return await tracker.settled(), tracker, notice_s, checked

    end, tracker, notice_s, checked = asyncio.run(churn())
    per_cycle = assert_nothing_leaked(tracker, end, "viewer", VIEWER_CYCLES)
    assert checked == (WARMUP_CYCLES + VIEWER_CYCLES) // MEDIA_EVERY
    unhandled = [line for line in churned.lines if any(sign in line for sign in UNHANDLED)]
    assert not unhandled, unhandled[:10]  # e.g. aiortc's connect task failing on a peer closed under it
    print(f"viewer churn: {per_cycle / 1000:.1f} kB RSS per cycle; closed peers noticed in "
          f"{max(notice_s):.2f} s at most; end {end}")


def test_push_churn_leaks_nothing(churned: ServerProcess) -> None:
    pcm = (np.sin(np.arange(640) / 5.0) * 8000).astype("<i2").tobytes()  # 40 ms at 16 kHz

    async def churn() -> tuple[dict[str, Any], Tracker]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            tracker = Tracker(http, churned.url)
            for cycle in range(WARMUP_CYCLES + PUSH_CYCLES):
                socket = await http.ws_connect(churned.url + "/api/push", headers=AUTH)
                assert (await socket.receive_json())["type"] == "ready"
                await socket.send_json({"type": "start", "sample_rate": 16_000})
                assert (await socket.receive_json())["type"] == "started"
                await socket.send_bytes(pcm)
                await socket.send_json({"type": "end"})
                assert (await socket.receive_json())["type"] == "queued"
                if cycle % 2:  # the agent vanishes: its TCP connection drops without a close frame
                    transport = socket._response.connection.transport  # type: ignore[union-attr]
                    assert transport is not None
                    transport.abort()
                await socket.close()
                await tracker.note(cycle + 1)
            return await tracker.settled(), tracker

    end, tracker = asyncio.run(churn())
    per_cycle = assert_nothing_leaked(tracker, end, "push", PUSH_CYCLES)
    events = [e["message"] for e in churned.get("/api/log")[1]["events"] if "agent push" in e["message"]]
    paired = events[events.index("agent push connected"):]  # the log is a ring: it may begin mid-cycle
    assert len(paired) > 20 and paired == ["agent push connected", "agent push disconnected"] * (len(paired) // 2)
    print(f"push churn: {per_cycle / 1000:.1f} kB RSS per cycle; end {end}")


async def _upstream_cycle(http: aiohttp.ClientSession, url: str, kind: str, *, delete: bool, media: bool) -> None:
    """Connect a microphone (a tone) or webcam (aiortc's test pattern) upstream, maybe wait until the server
    has received frames, then leave."""
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer.addTrack(AudioStreamTrack() if kind == "mic" else VideoStreamTrack())
    connected = asyncio.Event()

    @peer.on("connectionstatechange")
    def on_state() -> None:
        if peer.connectionState == "connected":
            connected.set()

    await peer.setLocalDescription(await peer.createOffer())
    async with http.post(f"{url}/api/{kind}", data=peer.localDescription.sdp,
                         headers={"Content-Type": "application/sdp", **AUTH}) as response:
        assert response.status == 201, await response.text()
        answer, location = await response.text(), response.headers["Location"]
    await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    await asyncio.wait_for(connected.wait(), 10)

    async def upstreams() -> list[dict[str, Any]]:
        return list((await get_json(http, url + "/api/stats"))["upstreams"])

    if media:
        await wait_for(lambda: _frames_arrived(upstreams), 10, f"{kind} frames at the server")
    if delete:
        async with http.delete(url + location, headers=AUTH) as response:
            assert response.status == 204, await response.text()
    await peer.close()
    if not delete:
        await wait_for(lambda: _no_upstreams(upstreams), NOTICE_S, "the server notices a closed upstream")


async def _frames_arrived(upstreams: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    rows = await upstreams()
    return bool(rows) and rows[0]["frames"] >= 5


async def _no_upstreams(upstreams: Callable[[], Awaitable[list[dict[str, Any]]]]) -> bool:
    return not await upstreams()


def test_upstream_churn_leaks_nothing(churned: ServerProcess) -> None:
    async def churn() -> tuple[dict[str, Any], Tracker]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            tracker = Tracker(http, churned.url)
            for cycle in range(WARMUP_CYCLES + UPSTREAM_CYCLES):
                webcam = cycle % 2 == 1  # its frames always reach the pose meter, a microphone's in one cycle in 5
                await _upstream_cycle(http, churned.url, "webcam" if webcam else "mic", delete=cycle % 4 < 2,
                                      media=webcam or cycle % 10 == 8)
                await tracker.note(cycle + 1)
            return await tracker.settled(), tracker

    end, tracker = asyncio.run(churn())
    per_cycle = assert_nothing_leaked(tracker, end, "upstream", UPSTREAM_CYCLES)
    print(f"upstream churn: {per_cycle / 1000:.1f} kB RSS per cycle; end {end}")
