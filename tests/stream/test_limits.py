"""Limits of the live server and its secrets: per-address request rate and lockout after wrong tokens, sessions
and viewers at capacity, body sizes; tokens compared in constant time and never logged.

One server with small limits serves the module. Each test talks to it from its own loopback address
(127.0.0.N: Linux routes all of 127/8 to the loopback), so one test's rate bucket or lockout is not another's.
It runs with DEBUG logging and a generated operator token; the last test reads everything it printed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection

from stream import app as app_module
from stream.config import ServeConfig
from stream.limits import AuthLockout, RateLimiter
from tests.helpers import ServerProcess
from twincast.errors import InputError

LIMITS = {"TWINCAST_SERVE_MAX_SESSIONS": "2", "TWINCAST_SERVE_MAX_VIEWERS": "2",
          "TWINCAST_SERVE_MAX_VIEWERS_PER_SESSION": "1", "TWINCAST_SERVE_MAX_BODY_BYTES": "65536",
          "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "0.1", "TWINCAST_SERVE_OPERATOR_BURST": "8",
          "TWINCAST_SERVE_MAX_AUTH_FAILURES": "3", "TWINCAST_SERVE_AUTH_LOCKOUT_S": "600"}


class Clock:
    """A clock moved by hand."""

    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


# --- the limiters, on a hand-run clock ---------------------------------------------------------------------------

def test_rate_limiter_allows_a_burst_then_the_rate_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, now=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # empty: the next token comes in 1 / rate
    assert limiter.take("b") == 0.0  # another address has its own bucket
    clock.now_s += 0.5
    assert limiter.take("a") == 0.0 and limiter.take("a") > 0
    clock.now_s += 100
    assert [limiter.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_rate_limiter_forgets_the_least_recent_address_beyond_its_bound() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_s=0.001, burst=1, now=clock, max_clients=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("c")  # "a" is forgotten: memory stays bounded under a flood of addresses
    assert limiter.take("b") > 0 and limiter.take("a") == 0.0


def test_lockout_after_max_failures_within_the_window_and_only_for_that_address() -> None:
    clock = Clock()
    lockout = AuthLockout(max_failures=3, lockout_s=60.0, now=clock)
    for _ in range(2):
        lockout.failed("a")
        clock.now_s += 1
    assert lockout.locked_for("a") == 0.0
    clock.now_s += 60  # the first two fall out of the window
    lockout.failed("a")
    assert lockout.locked_for("a") == 0.0
    lockout.failed("a")
    lockout.failed("a")
    assert lockout.locked_for("a") == pytest.approx(60.0) and lockout.locked_for("b") == 0.0
    clock.now_s += 30
    lockout.failed("a")  # failures during a lockout do not extend it
    assert lockout.locked_for("a") == pytest.approx(30.0)
    clock.now_s += 30
    assert lockout.locked_for("a") == 0.0
    lockout.failed("a")
    assert lockout.locked_for("a") == 0.0  # counting starts afresh


@pytest.mark.parametrize(("setting", "value", "message"), [
    ("max_sessions", 0, "serve max_sessions 0 must be in 1..256"),
    ("max_viewers_per_session", 5000, "serve max_viewers_per_session 5000 must be in 1..1000"),
    ("max_body_bytes", 10, "serve max_body_bytes 10 must be in 1024..1073741824"),
    ("operator_rate_per_s", 0.0, "serve operator_rate_per_s 0.0 must be in 0.1..100000"),
    ("operator_burst", 0, "serve operator_burst 0 must be in 1..100000"),
    ("max_auth_failures", 0, "serve max_auth_failures 0 must be in 1..1000000"),
    ("auth_lockout_s", 0.5, "serve auth_lockout_s 0.5 must be in 1..86400"),
])
def test_limits_are_validated_and_named(setting: str, value: float, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        ServeConfig(**{setting: value})  # type: ignore[arg-type]


def test_tokens_are_compared_as_digests_so_length_does_not_show(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", spy)
    token = "the-operator-token"
    assert app_module._matches(token, token)
    assert not app_module._matches("", token)
    assert not app_module._matches("x" * 10_000, token)
    assert not app_module._matches("bad\udcff\ud800", token)  # undecodable header bytes do not raise
    assert compared == [(32, 32)] * 4  # SHA-256 digests, whatever the lengths supplied
    assert hashlib.sha256(token.encode()).digest_size == 32


# --- the server ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def limited(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with small limits, DEBUG logging and an operator token it generates and shows once."""
    env = {key: value for key, value in os.environ.items() if key != "TWINCAST_OPERATOR_TOKEN"}
    env.update(LIMITS, TWINCAST_SERVE_RECORDINGS_DIR=str(tmp_path_factory.mktemp("recordings")))
    process = ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose",
                            "still", "--log-level", "DEBUG")
    process.env = env
    with process as served:
        shown = [line for line in served.lines if "#token=" in line]
        match = re.search(r"#token=(\S+)", shown[0])
        assert match is not None
        served.token = match.group(1)
        yield served


def request_from(source: str, server: ServerProcess, method: str, path: str, body: bytes | None = None, *,
                 headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict[str, str], Any]:
    """An HTTP request from the loopback address ``source``; returns (status, headers, decoded JSON or text)."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        if chunked:
            connection.putrequest(method, path)
            for key, value in {**(headers or {}), "Transfer-Encoding": "chunked"}.items():
                connection.putheader(key, value)
            connection.endheaders()
            for start in range(0, len(body or b""), 16384):
                piece = (body or b"")[start:start + 16384]
                try:
                    connection.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    break  # the server answered early and closed: read that answer
            else:
                connection.send(b"0\r\n\r\n")
        else:
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        payload = response.read().decode()
        kind = response.getheader("Content-Type", "")
        return response.status, dict(response.getheaders()), json.loads(payload) if "json" in kind else payload
    finally:
        connection.close()


def operator(server: ServerProcess, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}", **extra}


async def recvonly_offer() -> str:
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer.addTransceiver("video", direction="recvonly")
    peer.addTransceiver("audio", direction="recvonly")
    await peer.setLocalDescription(await peer.createOffer())
    offer = peer.localDescription.sdp
    await peer.close()
    return str(offer)


def test_operator_requests_beyond_the_burst_get_429_with_retry_after(limited: ServerProcess) -> None:
    answers = [request_from("127.0.0.3", limited, "GET", "/api/stats", headers=operator(limited))
               for _ in range(9)]
    assert [status for status, _, _ in answers] == [200] * 8 + [429]  # a burst of 8, then 0.1 per second
    _, headers, body = answers[-1]
    assert body["limit"] == {"name": "operator_rate_per_s", "value": 0.1}
    assert "operator_rate_per_s" in body["error"] and body["retry_after_s"] > 0
    assert int(headers["Retry-After"]) >= 1
    assert request_from("127.0.0.4", limited, "GET", "/api/stats", headers=operator(limited))[0] == 200
    assert request_from("127.0.0.3", limited, "GET", "/healthz")[0] == 200  # viewers are not rate-limited


def test_wrong_tokens_lock_the_address_out_even_for_the_right_token(limited: ServerProcess) -> None:
    wrong = {"Authorization": "Bearer not-the-token"}
    assert [request_from("127.0.0.5", limited, "GET", "/api/auth", headers=wrong)[0] for _ in range(3)] == [401] * 3
    status, headers, body = request_from("127.0.0.5", limited, "GET", "/api/auth", headers=operator(limited))
    assert status == 429 and body["limit"] == {"name": "max_auth_failures", "value": 3}
    assert "locked out" in body["error"] and int(headers["Retry-After"]) > 500  # auth_lockout_s is 600
    assert request_from("127.0.0.5", limited, "GET", f"/api/auth?token={limited.token}")[0] == 429
    assert request_from("127.0.0.6", limited, "GET", "/api/auth", headers=operator(limited))[0] == 200
    missing = [request_from("127.0.0.7", limited, "GET", "/api/auth")[0] for _ in range(5)]
    assert missing == [401] * 5  # no token at all guesses nothing: it does not count
    assert request_from("127.0.0.7", limited, "GET", "/api/auth", headers=operator(limited))[0] == 200


def test_sessions_beyond_max_sessions_get_503(limited: ServerProcess) -> None:
    json_headers = operator(limited, **{"Content-Type": "application/json"})
    created = request_from("127.0.0.8", limited, "POST", "/api/sessions", json.dumps({"id": "second"}).encode(),
                           headers=json_headers)
    assert created[0] == 201
    try:
        status, _, body = request_from("127.0.0.8", limited, "POST", "/api/sessions",
                                       json.dumps({"id": "third"}).encode(), headers=json_headers)
        assert status == 503 and body["limit"] == {"name": "max_sessions", "value": 2}
        assert "max_sessions" in body["error"]
    finally:
        assert request_from("127.0.0.8", limited, "DELETE", "/api/sessions/second", headers=operator(limited))[0] == 204


def whep_offer(server: ServerProcess, session: str) -> tuple[int, Any, str]:
    """POST a fresh recvonly offer to ``session``; returns (status, JSON error or None, Location)."""
    status, headers, body = request_from("127.0.0.9", server, "POST", f"/whep?session={session}",
                                         asyncio.run(recvonly_offer()).encode(),
                                         headers={"Content-Type": "application/sdp"})
    return status, body if status != 201 else None, headers.get("Location", "")


def test_viewers_beyond_the_per_session_and_total_limits_get_503(limited: ServerProcess) -> None:
    json_headers = operator(limited, **{"Content-Type": "application/json"})
    assert request_from("127.0.0.9", limited, "POST", "/api/sessions", json.dumps({"id": "other"}).encode(),
                        headers=json_headers)[0] == 201
    answers = []
    try:
        answers.append(whep_offer(limited, "default"))
        answers.append(whep_offer(limited, "default"))  # one per session
        answers.append(whep_offer(limited, "other"))
        answers.append(whep_offer(limited, "other"))  # two in all
        assert [status for status, _, _ in answers] == [201, 503, 201, 503]
        assert answers[1][1]["limit"] == {"name": "max_viewers_per_session", "value": 1}
        assert answers[3][1]["limit"] == {"name": "max_viewers", "value": 2}
        assert "max_viewers" in answers[3][1]["error"]
    finally:
        for _, _, location in answers:
            if location:
                assert request_from("127.0.0.9", limited, "DELETE", location)[0] == 204
        request_from("127.0.0.9", limited, "DELETE", "/api/sessions/other", headers=operator(limited))


def test_offers_answered_at_once_cannot_overshoot_the_viewer_limit(limited: ServerProcess) -> None:
    async def offers(count: int) -> list[tuple[int, str]]:
        async def one(client: aiohttp.ClientSession) -> tuple[int, str]:
            async with client.post(f"{limited.url}/whep", data=await recvonly_offer(),
                                   headers={"Content-Type": "application/sdp"}) as response:
                return response.status, response.headers.get("Location", "")

        async with aiohttp.ClientSession() as client:
            return await asyncio.gather(*(one(client) for _ in range(count)))

    answers = asyncio.run(offers(4))  # all four are being answered before any viewer exists
    try:
        assert sorted(status for status, _ in answers) == [201, 503, 503, 503]
    finally:
        for _, location in answers:
            if location:
                request_from("127.0.0.9", limited, "DELETE", location)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_max_body_bytes_gets_413_naming_the_limit(limited: ServerProcess, chunked: bool) -> None:
    source = "127.0.0.11" if chunked else "127.0.0.12"
    status, _, body = request_from(source, limited, "POST", "/api/play", os.urandom(200_000),
                                   headers=operator(limited, **{"Content-Type": "application/octet-stream"}),
                                   chunked=chunked)
    assert status == 413 and body["limit"] == {"name": "max_body_bytes", "value": 65536}
    assert "max_body_bytes" in body["error"]
    status, _, body = request_from(source, limited, "POST", "/api/say",
                                   json.dumps({"text": "x" * 70_000}).encode(),
                                   headers=operator(limited, **{"Content-Type": "application/json"}),
                                   chunked=chunked)
    assert status == 413 and body["limit"]["name"] in ("max_json_bytes", "max_body_bytes")


def test_the_token_never_reaches_the_log(limited: ServerProcess) -> None:
    token = limited.token
    request_from("127.0.0.13", limited, "GET", "/api/stats", headers=operator(limited))
    request_from("127.0.0.13", limited, "GET", f"/api/stats?token={token}")
    request_from("127.0.0.13", limited, "GET", f"/api/nowhere?token={token}")
    request_from("127.0.0.13", limited, "POST", f"/api/say?token={token}", b"{not json",
                 headers={"Content-Type": "application/json"})

    async def sockets() -> None:
        async with aiohttp.ClientSession() as client:
            for path in ("/api/events", "/api/push"):
                async with client.ws_connect(f"{limited.url}{path}?token={token}") as socket_:
                    await socket_.receive_json(timeout=10)
                    await socket_.send_str("junk")
                    await socket_.receive_json(timeout=10)

    asyncio.run(sockets())
    host, port = limited.url.removeprefix("http://").split(":")
    for raw in (f"GET /api/stats HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\x01\r\n\r\n",
                f"GET /api/stats?token={token}\x01 HTTP/1.1\r\nHost: x\r\n\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as raw_socket:
            raw_socket.sendall(raw.encode())  # a header aiohttp refuses, and logs as it came
            assert raw_socket.recv(100).startswith(b"HTTP/1.")
    marker = "log-check-done"  # a header aiohttp refuses, with a marker in it: logged after all of the above
    with socket.create_connection((host, int(port)), timeout=10) as raw_socket:
        raw_socket.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nX-Marker: {marker}\x01\r\n\r\n".encode())
        assert raw_socket.recv(100).startswith(b"HTTP/1.")
    lines = wait_for_line(limited, marker)
    showing = [line for line in lines if token in line]
    assert len(showing) == 1 and "#token=" in showing[0], showing  # the one deliberate announcement
    assert sum("[token]" in line for line in lines) >= 2  # aiohttp did log those header lines, blanked


def wait_for_line(server: ServerProcess, text: str, timeout_s: float = 10.0) -> list[str]:
    """The server's output lines, once one of them holds ``text``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = list(server.lines)
        if any(text in line for line in lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in the server's output")
