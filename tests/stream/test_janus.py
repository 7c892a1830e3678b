"""Publishing into a Janus VideoRoom (an SFU), with Debian's real ``janus`` on this machine and aiortc subscribers.

A twincast server started with ``--publish janus://…`` publishes its session into a room once; ten subscribers
read it from Janus (the twin's own pictures, at the session's size, and its audio) while twincast holds one peer
and no viewer. An output added through the API goes ``live``, turns ``reconnecting`` when Janus is killed, is
``live`` again when Janus is back (subscribers can join again), and leaves the room when it is removed. Bad
targets are refused with a 400 that names the problem, and ``serve --publish`` refuses them at start-up.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ServerProcess, run_cli, wait_until
from tests.stream.janus_sfu import JanusServer, Subscriber, participants

pytestmark = pytest.mark.integration
ROOM_FLAG = 4101  # the room serve --publish names
ROOM_API = 4102  # the room the API's output creates (with a secret)
SECRET = "room-secret-5150"
SUBSCRIBERS = 10


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusServer]:
    """Janus on a free loopback port for this module (killed at the end)."""
    with JanusServer(tmp_path_factory.mktemp("janus")) as server:
        yield server


@pytest.fixture(autouse=True)
def janus_log(janus: JanusServer) -> Iterator[None]:
    """Print what Janus logged during a test (pytest shows it when the test fails)."""
    start = janus.log.stat().st_size if janus.log.exists() else 0
    yield
    with janus.log.open("rb") as log:
        log.seek(start)
        print("--- Janus log during the test ---\n" + log.read().decode(errors="replace")[-6000:])


@pytest.fixture(scope="module")
def twincast(pack: Path, artifact: Path, janus: JanusServer) -> Iterator[ServerProcess]:
    """``twincast serve --publish janus://…/ROOM_FLAG`` of the tiny twin."""
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       "--publish", janus.url(ROOM_FLAG), env={
                           "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "1000", "TWINCAST_SERVE_OPERATOR_BURST": "1000"},
                       ) as process:
        yield process


def janus_outputs(server: ServerProcess) -> list[dict[str, Any]]:
    return [o for o in server.get("/api/outputs")[1]["outputs"] if o["kind"] == "janus"]


def output_row(server: ServerProcess, output_id: str) -> dict[str, Any]:
    return next(o for o in server.get("/api/outputs")[1]["outputs"] if o["id"] == output_id)


class Scenario:
    """Blocking server calls and waits run off the event loop, so the subscribers keep receiving meanwhile."""

    def __init__(self, server: ServerProcess, janus: JanusServer, http: aiohttp.ClientSession) -> None:
        self.server, self.janus, self.http = server, janus, http
        self.loop = asyncio.get_running_loop()

    async def call(self, method: Any, *args: Any) -> Any:
        return await self.loop.run_in_executor(None, method, *args)

    async def until(self, probe: Any, timeout_s: float, what: str) -> Any:
        return await self.loop.run_in_executor(None, lambda: wait_until(probe, timeout_s, every_s=0.1, what=what))

    async def publisher(self, room: int, display: str, timeout_s: float = 20) -> int:
        """The id of ``display``'s publisher in ``room``, once Janus lists it."""
        deadline = self.loop.time() + timeout_s
        while True:
            found = [p for p in await participants(self.http, self.janus.api_url, room)
                     if p.get("display") == display and p.get("publisher")]
            if found:
                return int(found[0]["id"])
            assert self.loop.time() < deadline, f"no publisher {display!r} in room {room} within {timeout_s} s"
            await asyncio.sleep(0.2)

    async def subscribe(self, room: int, count: int, pin: str | None = None, frames: int = 25
                        ) -> list[Subscriber]:
        """``count`` subscribers of the session's publisher in ``room``, once each has ``frames`` video frames
        and audio (about a second of media)."""
        session = (await self.call(self.server.get, "/api/stats"))[1]["default_session"]
        feed = await self.publisher(room, session)
        subscribers = [Subscriber(self.janus.api_url, room, feed, pin=pin) for _ in range(count)]
        await asyncio.gather(*(subscriber.join(self.http) for subscriber in subscribers))
        deadline = self.loop.time() + 30
        while not all(s.video_frames >= frames and s.audio_frames >= frames for s in subscribers):
            assert self.loop.time() < deadline, [(s.video_frames, s.audio_frames) for s in subscribers]
            await asyncio.sleep(0.2)
        return subscribers


def test_serve_publish_fans_out_to_ten_subscribers_with_one_peer(twincast: ServerProcess,
                                                                 janus: JanusServer) -> None:
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            run = Scenario(twincast, janus, http)
            marks["live"] = await run.until(lambda: [o for o in janus_outputs(twincast) if o["state"] == "live"],
                                            30, "the --publish output live")
            marks["before"] = (await run.call(twincast.get, "/api/debug/resources"))[1]
            subscribers = await run.subscribe(ROOM_FLAG, SUBSCRIBERS)
            marks["during"] = (await run.call(twincast.get, "/api/debug/resources"))[1]
            marks["stats"] = (await run.call(twincast.get, "/api/stats"))[1]
            marks["received"] = [(s.video_frames, s.audio_frames, s.sizes) for s in subscribers]
            await asyncio.gather(*(subscriber.leave() for subscriber in subscribers))

    asyncio.run(scenario())
    live = marks["live"][0]
    assert live["target"] == janus.url(ROOM_FLAG) and live["session"] == marks["stats"]["default_session"], live
    frame_size = tuple(marks["stats"]["frame_size"])
    for video_frames, audio_frames, sizes in marks["received"]:
        assert video_frames >= 25 and audio_frames >= 25 and sizes == {frame_size}, marks["received"]
    assert marks["stats"]["viewers"] == 0  # nobody watches twincast directly ...
    assert marks["before"]["peers_held"] == marks["during"]["peers_held"] == 1, marks  # ... it holds one peer


def test_api_output_reconnects_when_janus_comes_back_and_leaves_the_room(twincast: ServerProcess,
                                                                         janus: JanusServer) -> None:
    marks: dict[str, Any] = {}

    async def scenario() -> None:
        async with aiohttp.ClientSession() as http:
            run = Scenario(twincast, janus, http)
            status, created = await run.call(twincast.post, "/api/outputs",
                                             {"kind": "janus", "url": janus.url(ROOM_API, f"secret={SECRET}")})
            assert status == 201, created
            marks["created"] = created
            output_id = created["id"]
            await run.until(lambda: output_row(twincast, output_id)["state"] == "live", 30, "the output live")
            first = await run.subscribe(ROOM_API, 1, pin=SECRET, frames=10)
            await asyncio.gather(*(s.leave() for s in first))

            await run.call(janus.stop)  # Janus goes away ...
            marks["reconnecting"] = await run.until(
                lambda: (row := output_row(twincast, output_id))["state"] == "reconnecting" and row, 20,
                "the output reconnecting")
            await run.call(janus.start)  # ... and comes back (its rooms gone: the output makes its room again)
            marks["again"] = await run.until(
                lambda: (row := output_row(twincast, output_id))["state"] == "live" and row["connects"] >= 2 and row,
                40, "the output live again")
            again = await run.subscribe(ROOM_API, 1, pin=SECRET, frames=10)
            marks["again_received"] = (again[0].video_frames, again[0].audio_frames)
            await asyncio.gather(*(s.leave() for s in again))

            status, marks["final"] = await run.call(twincast.delete, f"/api/outputs/{output_id}")
            assert status == 200, marks["final"]
            marks["left"] = await participants(http, janus.api_url, ROOM_API)

            status, missing = await run.call(twincast.post, "/api/outputs",
                                             {"kind": "janus", "url": janus.url(4999, "create=0")})
            assert status == 201, missing
            marks["missing"] = await run.until(
                lambda: (row := output_row(twincast, missing["id"]))["state"] == "reconnecting" and row, 20,
                "the output to a missing room reconnecting")
            await run.call(twincast.delete, f"/api/outputs/{missing['id']}")

    asyncio.run(scenario())
    assert marks["created"]["target"] == janus.url(ROOM_API, "secret=********5150"), marks["created"]
    assert marks["reconnecting"]["error"] and marks["reconnecting"]["reconnects"] >= 1, marks["reconnecting"]
    assert marks["again_received"][0] >= 10 and marks["again_received"][1] >= 10, marks["again_received"]
    final = marks["final"]
    assert final["state"] == "stopped" and final["video_frames"] > 25 and final["audio_frames"] > 25, final
    assert not [p for p in marks["left"] if p.get("publisher")], marks["left"]  # it left the room
    assert "room 4999 does not exist" in marks["missing"]["error"], marks["missing"]
    shown = json.dumps([marks["created"], marks["reconnecting"], marks["again"], final])
    assert SECRET not in shown  # masked in every response ...
    assert not [line for line in twincast.lines if SECRET in line]  # ... and never logged


@pytest.mark.parametrize(("url", "says"), [
    ("http://127.0.0.1:8088/1234", "scheme 'http' must be janus or januss"),
    ("janus://127.0.0.1:8088/lobby", "room 'lobby' must be a number"),
    ("janus://127.0.0.1:8088/", "room '(none)' must be a number"),
    ("janus://127.0.0.1:99999/1", "port must be a number in 1..65535"),
    ("janus://127.0.0.1:8088/1?pin=x", "option 'pin' is unknown"),
    ("janus://127.0.0.1:8088/1?create=maybe", "option create must be 0"),
    ("janus://127.0.0.1:8088/1 2", "printable ASCII without spaces"),
    ("janus://[::1/1", "is not a URL"),
])
def test_bad_janus_targets_are_refused_naming_the_problem(twincast: ServerProcess, url: str, says: str) -> None:
    status, body = twincast.post("/api/outputs", {"kind": "janus", "url": url})
    assert status == 400 and says in body["error"], (status, body)


def test_serve_refuses_a_bad_publish_target_at_start_up(pack: Path, artifact: Path) -> None:
    result = run_cli("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0",
                     "--publish", "janus://127.0.0.1:8088/room?secret=hidden-secret-1", check=False, timeout=60)
    assert result.returncode != 0
    assert "publish target 1 of 1" in result.stderr and "room 'room' must be a number" in result.stderr, result.stderr
    assert "hidden-secret-1" not in result.stderr
