"""TURN: twincast hands viewers coturn credentials, and a viewer that may only relay watches through coturn.

A real coturn (Debian's ``turnserver``) runs on loopback with ``use-auth-secret``; a real ``twincast serve`` is given
its URL and the same secret. The viewers take their credentials from the server: an aiortc WHEP viewer with the
relay-only transport policy (it gathers no host candidates, so every packet it gets came through coturn, and
coturn's own log counts the bytes its peer sent), and the player page and the dashboard in Chromium. Credentials
that are wrong or expired are refused by coturn itself, so the HMAC is checked by the party that matters.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioice import stun, turn
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

from stream.config import ServeConfig
from stream.ice import MIN_SECRET_CHARS, ice_servers, turn_credentials
from stream.whep_client import WhepViewer
from tests.helpers import ServerProcess, http, wait_until
from tests.stream.test_churn import wait_for
from tests.stream.test_player_chromium import CHROMIUM, CHROMIUM_ARGS, PLAYBACK, PageProbe
from twincast.errors import InputError

TURNSERVER = "/usr/bin/turnserver"
SECRET = "turn-secret-" + secrets.token_hex(16)
REALM = "twincast.test"
TURN_NAME = re.compile(r"(\d+):twincast-[0-9a-f]{8}")


def free_port() -> int:
    """A loopback port free for both UDP and TCP (coturn listens on both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise AssertionError("no loopback port was free for both UDP and TCP")


class Coturn:
    """Debian's coturn on loopback, authenticating with the TURN REST API secret, logging to a file."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log = workdir / "turnserver.log"
        relay_low = 49152 + secrets.randbelow(15_000)
        self.args = [
            TURNSERVER, "-n", "--listening-ip", "127.0.0.1", "--listening-port", str(self.port),
            "--relay-ip", "127.0.0.1", "--min-port", str(relay_low), "--max-port", str(relay_low + 200),
            "--use-auth-secret", "--static-auth-secret", SECRET, "--realm", REALM, "--no-tls", "--no-dtls",
            "--allow-loopback-peers", "--no-cli", "--no-software-attribute", "--log-file", str(self.log),
            "--simple-log", "--no-stdout-log", "--verbose", "--pidfile", str(workdir / "turnserver.pid")]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its TURN URL, as viewers are told it."""
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    def text(self) -> str:
        """Its log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> Coturn:
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        listening = f"UDP listener opened on: 127.0.0.1:{self.port}"

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"turnserver exited ({self.process.returncode}): "
                                     f"{self.process.stderr.read().decode() if self.process.stderr else ''}\n"
                                     f"{self.text()[-3000:]}")
            return listening in self.text()

        wait_until(ready, 20, what=f"coturn listening on UDP 127.0.0.1:{self.port}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def peer_usage(self, username: str) -> tuple[int, int] | None:
        """Packets and bytes coturn received from the relayed peers of ``username``'s allocations, once all of them
        have closed (coturn logs each one's "peer usage" then); None while one is still open."""
        user = re.escape(f"realm=<{REALM}>, username=<{username}>")
        text = self.text()
        opened = len(re.findall(rf"new, {user}", text))
        closed = [(int(packets), int(size))
                  for packets, size in re.findall(rf"peer usage: {user}, rp=(\d+), rb=(\d+)", text)]
        if not opened or len(closed) != opened:
            return None
        return sum(packets for packets, _ in closed), sum(size for _, size in closed)

    def allocated(self, username: str) -> bool:
        """Whether coturn gave ``username`` a relay allocation."""
        return f"user <{username}>: incoming packet ALLOCATE processed, success" in self.text()


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    if shutil.which(TURNSERVER) is None:
        pytest.fail(f"{TURNSERVER} is missing: install Debian's coturn (apt-get install coturn; make test does this "
                    "when run as root)")
    with Coturn(tmp_path_factory.mktemp("coturn")) as running:
        yield running


@pytest.fixture(scope="module")
def turn_server(pack: Path, artifact: Path, coturn: Coturn) -> Iterator[ServerProcess]:
    """``twincast serve`` that hands its viewers coturn (with the shared secret) and a STUN URL."""
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env={"TWINCAST_SERVE_TURN_URLS": coturn.url, "TWINCAST_SERVE_TURN_SECRET": SECRET,
                            "TWINCAST_SERVE_STUN_URLS": f"stun:127.0.0.1:{coturn.port}"}) as process:
        yield process


def turn_entry(servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The TURN entry of an ``iceServers`` list."""
    return next(server for server in servers if server["urls"][0].startswith("turn:"))


async def allocate(port: int, username: str, credential: str) -> tuple[str, int]:
    """Ask coturn for a relay allocation with these credentials; its relayed address, released again."""
    transport, _ = await turn.create_turn_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port), username,
                                                   credential)
    address = transport.get_extra_info("sockname")
    transport.close()
    return address


async def refusal(port: int, username: str, credential: str) -> int:
    """The STUN error code coturn answers an allocation with these credentials with (fails if it allocates)."""
    try:
        address = await allocate(port, username, credential)
    except stun.TransactionFailed as exc:
        return int(exc.response.attributes["ERROR-CODE"][0])
    raise AssertionError(f"coturn allocated {address} for {username!r} with credentials it should refuse")


def test_ice_settings_are_checked_with_clear_errors() -> None:
    secret = "s" * MIN_SECRET_CHARS
    cases = [
        ({"turn_urls": ("turn:turn.example.com",)}, "TWINCAST_SERVE_TURN_SECRET"),
        ({"turn_urls": ("http://turn.example.com",), "turn_secret": secret}, "is not a TURN URL"),
        ({"stun_urls": ("turn:turn.example.com",)}, "is not a STUN URL"),
        ({"turn_secret": secret}, "turn_urls is empty"),
        ({"turn_urls": ("turn:t.example.com",), "turn_secret": "short"}, f"at least {MIN_SECRET_CHARS} characters"),
        ({"turn_urls": ("turn:t.example.com",), "turn_secret": secret, "turn_ttl_s": 5.0}, "turn_ttl_s 5.0"),
    ]
    for settings, message in cases:
        with pytest.raises(InputError, match=re.escape(message)):
            ServeConfig(**settings)  # type: ignore[arg-type]
    config = ServeConfig(stun_urls=("stun:[::1]:3478",),
                         turn_urls=("turn:turn.example.com:3478?transport=udp", "turns:turn.example.com:5349"),
                         turn_secret=secret)
    assert secret not in repr(config)
    servers = ice_servers(config.stun_urls, config.turn_urls, config.turn_secret, 600, now=1_000_000)
    assert [server.urls for server in servers] == [config.stun_urls, config.turn_urls]
    assert servers[1].username is not None and servers[1].username.startswith("1000600:twincast-")
    assert ice_servers((), (), None, 600) == []


def test_coturn_takes_twincasts_credentials_and_refuses_wrong_or_expired_ones(turn_server: ServerProcess,
                                                                              coturn: Coturn) -> None:
    status, body = http("GET", turn_server.url + "/api/ice-servers")
    assert status == 200, body
    entry = turn_entry(body["iceServers"])
    username, credential = entry["username"], entry["credential"]
    expired, expired_credential = turn_credentials(SECRET, "twincast-expired", int(time.time()) - 60)
    forged, forged_credential = turn_credentials("not-the-" + SECRET, "twincast-forged", int(time.time()) + 600)

    async def scenario() -> tuple[tuple[str, int], list[int]]:
        relayed = await allocate(coturn.port, username, credential)
        codes = [await refusal(coturn.port, username, credential[:-2] + ("A=" if credential[-2] != "A" else "B=")),
                 await refusal(coturn.port, expired, expired_credential),
                 await refusal(coturn.port, forged, forged_credential)]
        return relayed, codes

    relayed, codes = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert relayed[0] == "127.0.0.1"
    assert codes == [401, 401, 401]  # a changed HMAC, a past expiry, another secret: all Unauthorized
    log = coturn.text()
    assert f"user <{username}>: incoming packet ALLOCATE processed, success" in log
    assert f"user <{expired}>: incoming packet message processed, error 401" in log


def test_ice_servers_endpoint_and_whep_links_hand_out_credentials_not_the_secret(turn_server: ServerProcess,
                                                                                 coturn: Coturn) -> None:
    seen: list[str] = []
    status, body = http("GET", turn_server.url + "/api/ice-servers")  # no token: guarded like WHEP, none set
    assert status == 200
    seen.append(json.dumps(body))
    stun_entry, turn_one = body["iceServers"]
    assert stun_entry == {"urls": [f"stun:127.0.0.1:{coturn.port}"]}
    assert turn_one["urls"] == [coturn.url] and turn_one["credentialType"] == "password"
    match = TURN_NAME.fullmatch(turn_one["username"])
    assert match, turn_one["username"]
    assert abs(int(match.group(1)) - (time.time() + 86_400)) < 120  # serve.turn_ttl_s: a day by default
    assert turn_one["credential"] == turn_credentials(SECRET, turn_one["username"].split(":", 1)[1],
                                                      int(match.group(1)))[1]
    turn_two = turn_entry(http("GET", turn_server.url + "/api/ice-servers")[1]["iceServers"])
    assert turn_two["username"] != turn_one["username"]  # each viewer is told apart in coturn's log

    async def whep_links() -> tuple[int, list[str], str]:
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peer.addTransceiver("video", direction="recvonly")
        peer.addTransceiver("audio", direction="recvonly")
        await peer.setLocalDescription(await peer.createOffer())
        try:
            async with aiohttp.ClientSession() as client:
                async with client.post(turn_server.url + "/whep", data=peer.localDescription.sdp,
                                       headers={"Content-Type": "application/sdp"}) as response:
                    answer = await response.text()
                    links = response.headers.getall("Link", [])
                    result = response.status, links, answer + json.dumps(dict(response.headers))
                async with client.delete(turn_server.url + response.headers["Location"]):
                    pass
        finally:
            await peer.close()
        return result

    status, links, everything = asyncio.run(asyncio.wait_for(whep_links(), 60))
    assert status == 201
    seen.append(everything)
    assert links[0] == f'<stun:127.0.0.1:{coturn.port}>; rel="ice-server"'
    link = re.fullmatch(r'<(.+)>; rel="ice-server"; username="([^"]+)"; credential="([^"]+)"; '
                        r'credential-type="password"', links[1])
    assert link and link.group(1) == coturn.url and TURN_NAME.fullmatch(link.group(2)), links
    for path in ("/api/stats", "/api/openapi.json", "/api/log"):
        seen.append(json.dumps(turn_server.get(path)[1]))
    assert all(SECRET not in text for text in seen)
    assert all(SECRET not in line for line in turn_server.lines)


def test_a_viewer_that_may_only_relay_watches_through_coturn(turn_server: ServerProcess, coturn: Coturn) -> None:
    async def scenario() -> tuple[str, str, int]:
        async with aiohttp.ClientSession() as client:
            async with client.get(turn_server.url + "/api/ice-servers") as response:
                entry = turn_entry((await response.json())["iceServers"])
            relay_only = RTCConfiguration(
                iceServers=[RTCIceServer(urls=entry["urls"], username=entry["username"],
                                         credential=entry["credential"])],
                iceTransportPolicy=RTCIceTransportPolicy.RELAY)
            offers: list[str] = []

            async def keep(offer: str) -> str:
                offers.append(offer)
                return offer

            viewer = WhepViewer(turn_server.url, configuration=relay_only, rewrite_offer=keep)
            try:
                await viewer.connect(client)
                await asyncio.wait_for(viewer.connected.wait(), 30)
                await wait_for(lambda: len(viewer.media.video_pts) >= 25, 30, "25 video frames through the relay")
                frames = len(viewer.media.video_pts)
            finally:
                await viewer.hang_up(client)
        return entry["username"], offers[0], frames

    username, offer, frames = asyncio.run(asyncio.wait_for(scenario(), 120))
    candidates = re.findall(r"a=candidate:.* typ (\w+)", offer)
    assert candidates and set(candidates) == {"relay"}, candidates  # coturn was the viewer's only way in
    assert frames >= 25, f"only {frames} video frames arrived through the relay"
    assert coturn.allocated(username)
    assert f"user <{username}>: incoming packet CHANNEL_BIND processed, success" in coturn.text()  # twincast's
    packets, size = wait_until(lambda: coturn.peer_usage(username), 30, every_s=0.2,
                               what=f"coturn's peer usage lines for every allocation of {username}")
    assert packets >= frames, f"{frames} frames arrived but coturn relayed only {packets} packets from twincast"
    assert size > 10_000, f"coturn relayed only {size} bytes from twincast to the viewer"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does this when run as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as running:
        browser = running.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


RELAY_CANDIDATES = """async (peer) => {
  const report = await peer.getStats();
  return [...report.values()].filter((stat) => stat.type === "local-candidate" && stat.candidateType === "relay")
    .length;
}"""


def turn_username(servers: list[dict[str, Any]], coturn: Coturn) -> str:
    """The TURN username a page's peer was configured with (it must have been given coturn)."""
    entry = next((server for server in servers if coturn.url in server.get("urls", [])), None)
    assert entry is not None and TURN_NAME.fullmatch(entry.get("username", "")), servers
    return str(entry["username"])


def test_the_player_and_the_dashboard_preview_use_the_servers_turn(turn_server: ServerProcess, coturn: Coturn,
                                                                   chromium: Any) -> None:
    page = chromium.new_page()
    probe = PageProbe(page)
    page.goto(turn_server.url + "/")
    probe.wait(PLAYBACK, lambda seen: seen["playing"], "playing video", timeout_s=30)
    username = turn_username(page.evaluate("pc.getConfiguration().iceServers"), coturn)
    page.wait_for_function(f"({RELAY_CANDIDATES})(pc)", timeout=20_000)  # Chromium got a relay from coturn
    assert coturn.allocated(username)
    page.close()

    dashboard = chromium.new_page(viewport={"width": 1440, "height": 1000})
    dashboard.goto(f"{turn_server.url}/dashboard#token={turn_server.token}")
    dashboard.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=30_000)
    username = turn_username(dashboard.evaluate("state.preview.getConfiguration().iceServers"), coturn)
    dashboard.wait_for_function(f"({RELAY_CANDIDATES})(state.preview)", timeout=20_000)
    assert coturn.allocated(username)
    dashboard.close()
