"""Hostile input on the live server: every endpoint gets 2xx or a 4xx with a JSON message, never a 5xx, and the
viewer it already has keeps receiving frames meanwhile.

Schemathesis drives every operation of ``/api/openapi.json`` (positive and negative cases, the documented
statuses, bodies and auth); Hypothesis drives what a schema cannot describe: SDP offers cut short or mangled,
WebSocket message sequences, PCM at odd rates and byte counts, audio uploads that are empty, truncated,
mislabelled or huge. The cases found by hand first are pinned below as plain tests. Every example is counted, and
the last test prints the counts per endpoint (RELIABILITY.md keeps them).

Examples are derandomized (the same cases on every run and machine) and few enough for CI.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import socket
import threading
import time
import wave
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
import requests
import schemathesis
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.config import SchemathesisConfig

from stream.app import ROUTES
from stream.audio_queue import StreamChunker
from stream.http_common import check_sdp
from stream.openapi import build_document
from stream.peers import answer, new_peer
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import OPERATOR_TOKEN, ServerProcess, http
from twincast.errors import InputError

CASES: Counter[str] = Counter()  # examples tried, per endpoint
# The watching viewer's aiortc, on its own thread, draws from ``random`` (RTCP timing) while Hypothesis makes cases
# on this one; Hypothesis sees the module's state move and takes it for a strategy using ``random``.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)
SERVER_ENV = {"TWINCAST_SERVE_OPERATOR_RATE_PER_S": "100000", "TWINCAST_SERVE_OPERATOR_BURST": "100000",
              "TWINCAST_SERVE_MAX_AUTH_FAILURES": "1000000", "TWINCAST_SERVE_MAX_SESSIONS": "3",
              "TWINCAST_SERVE_MAX_VIEWERS_PER_SESSION": "4", "TWINCAST_SERVE_MAX_VIEWERS": "6"}
REPLY_TYPES = {"ready", "started", "queued", "interrupted", "status", "error"}


# --- material: real offers, real audio ----------------------------------------------------------------------------

def real_offers() -> dict[str, str]:
    """Offers an aiortc peer makes: a WHEP viewer's (recvonly), a microphone's, a webcam's and a WHIP sender's
    (sendonly)."""
    async def offer(*transceivers: tuple[str, str]) -> str:
        peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for kind, direction in transceivers:
            peer.addTransceiver(kind, direction=direction)
        await peer.setLocalDescription(await peer.createOffer())
        sdp = str(peer.localDescription.sdp)
        await peer.close()
        return sdp

    async def all_three() -> dict[str, str]:
        return {"whep": await offer(("video", "recvonly"), ("audio", "recvonly")),
                "mic": await offer(("audio", "sendonly")), "webcam": await offer(("video", "sendonly")),
                "whip": await offer(("audio", "sendonly"), ("video", "sendonly"))}

    return {kind: fixed(sdp) for kind, sdp in asyncio.run(all_three()).items()}


def fixed(offer: str) -> str:
    """``offer`` with what aiortc draws at random (ids, credentials, fingerprints, ports, this machine's
    addresses) set to fixed values, so the cases made from it are the same on every run and machine."""
    for pattern, replacement in (
            (r"o=- \d+ \d+", "o=- 1 1"), (r"a=ice-ufrag:\S+", "a=ice-ufrag:fuzz"),
            (r"a=ice-pwd:\S+", "a=ice-pwd:fuzzfuzzfuzzfuzzfuzzfu"), (r"a=msid:\S+ ", "a=msid:stream "),
            (r"(a=msid:stream) \S+", r"\1 track"), (r"\b\d{6,10}\b", "1234567"), (r"cname:\S+", "cname:fuzz"),
            (r"(a=fingerprint:\S+ )(\S+)", lambda m: m.group(1) + re.sub(r"[0-9A-F]{2}", "AB", m.group(2))),
            (r"m=(\w+) \d+", r"m=\1 9"), (r"c=IN IP4 \S+", "c=IN IP4 127.0.0.1"),
            (r"(a=candidate:.*\r\n)+", "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n")):
        offer = re.sub(pattern, replacement, offer)
    return offer


def wav_bytes(seconds: float, rate_hz: int = 16_000, *, channels: int = 1) -> bytes:
    """A 220 Hz tone as a 16-bit WAV file."""
    samples = np.arange(int(seconds * rate_hz)) / max(rate_hz, 1)
    tone = (np.sin(2 * np.pi * 220 * samples) * 8000).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(2)
        handle.setframerate(rate_hz)
        handle.writeframes(np.repeat(tone, channels).tobytes())
    return buffer.getvalue()


def flac_silence(seconds: float, rate_hz: int = 8000) -> bytes:
    """Silence as FLAC: it compresses to almost nothing (20 minutes is about 200 KB)."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as container:
        stream = container.add_stream("flac", rate=rate_hz, layout="mono")
        block = np.zeros((1, rate_hz), np.int16)
        for second in range(int(seconds)):
            frame = av.AudioFrame.from_ndarray(block, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate_hz, second * rate_hz
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                    "3a7e9b550000000a49444154789c636000000002000154a24f5d0000000049454e44ae426082")


def sdp_bodies(offer: str) -> st.SearchStrategy[bytes]:
    """SDP as a hostile client sends it: cut short, lines dropped or repeated, a value replaced, not SDP at all,
    not UTF-8, or over the 64 KiB limit."""
    lines = offer.split("\r\n")

    def replaced(index_and_value: tuple[int, str]) -> bytes:
        """One line's value replaced, its ``x=`` or ``a=name:`` kept (so the parser's branch for it runs)."""
        index, value = index_and_value
        kept = list(lines)
        line = kept[index % len(kept)]
        kept[index % len(kept)] = line[:line.find(":") + 1 or 2] + value
        return "\r\n".join(kept).encode("utf-8", "surrogatepass")

    return st.one_of(
        st.integers(0, len(offer)).map(lambda cut: offer[:cut].encode()),
        st.lists(st.sampled_from(lines), max_size=len(lines) + 5).map(lambda kept: "\r\n".join(kept).encode()),
        st.tuples(st.integers(0, 200), st.one_of(st.text(max_size=30), st.from_regex(r"[0-9a-z /:.*-]{0,30}",
                                                                                      fullmatch=True))).map(replaced),
        st.binary(max_size=300),
        st.just((offer * (70_000 // len(offer) + 1)).encode()),
    )


def audio_bodies() -> st.SearchStrategy[bytes]:
    """Uploads for ``/api/play``: audio, audio cut short or with bytes changed, an image, noise, nothing."""
    clip = wav_bytes(0.4)

    def flipped(spots: list[tuple[int, int]]) -> bytes:
        body = bytearray(clip)
        for index, value in spots:
            body[index % len(body)] = value
        return bytes(body)

    return st.one_of(st.just(clip), st.integers(0, len(clip)).map(lambda cut: clip[:cut]),
                     st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=8)
                     .map(flipped), st.just(PNG), st.binary(max_size=400))


OFFERS = real_offers()  # made once, here: aiortc draws random ids, which a strategy must not do
schemathesis.openapi.media_type("application/sdp", sdp_bodies(OFFERS["whep"]))
schemathesis.openapi.media_type("application/octet-stream", audio_bodies())
SCHEMA = schemathesis.openapi.from_dict(build_document(ROUTES), config=SchemathesisConfig.from_dict({
    "seed": 20261129,
    "generation": {"mode": "all", "max-examples": 6, "deterministic": True},
    "phases": {"stateful": {"enabled": False}},
    "auth": {"openapi": {"bearer": {"bearer": OPERATOR_TOKEN}}},  # the token ServerProcess gives its server
}))


# --- the server and its viewer --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def hostile(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server to be fuzzed: its per-address limits are out of the way (``test_limits`` tests them)."""
    recordings = tmp_path_factory.mktemp("recordings")
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env={**SERVER_ENV, "TWINCAST_SERVE_RECORDINGS_DIR": str(recordings)}) as process:
        yield process


class Watcher:
    """A real WHEP viewer, connected in a thread of its own for as long as the module's tests run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.media: ReceivedMedia | None = None
        self.error: BaseException | None = None
        self.started_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="whep-watcher", daemon=True)

    def _run(self) -> None:
        async def until_stopped() -> None:
            self.started_at = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)

        try:
            self.media = asyncio.run(pull(self.url, 1.0, keep_video=2, during=until_stopped,
                                          reduce=lambda rgb: rgb[:2, :2]))
        except BaseException as exc:  # handed to the test that asks, on the test's thread
            self.error = exc

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> ReceivedMedia:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error
        assert self.media is not None
        return self.media


@pytest.fixture(scope="module")
def watcher(hostile: ServerProcess) -> Iterator[Watcher]:
    watching = Watcher(hostile.url).start()
    yield watching
    if watching.media is None and watching.error is None:
        watching.stop()


def assert_clear_error(status: int, body: Any, where: str) -> None:
    """A refusal is a 4xx with a JSON body that says what was wrong (or a 503 naming the capacity limit it met);
    anything else is a server error."""
    assert status < 500 or (status == 503 and isinstance(body, dict) and "limit" in body), (where, status, body)
    if status >= 400:
        assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (where, body)
        assert body["status"] == status, (where, body)


# --- every operation of the OpenAPI document ----------------------------------------------------------------

CHECKS = [schemathesis.checks.status_code_conformance,  # 5xx: see assert_clear_error
          schemathesis.checks.content_type_conformance, schemathesis.checks.response_schema_conformance,
          schemathesis.checks.negative_data_rejection, schemathesis.checks.ignored_auth]


@SCHEMA.parametrize()
@FUZZ
def test_every_operation_answers_2xx_or_a_clear_4xx(case: Any, hostile: ServerProcess, watcher: Watcher) -> None:
    with requests.Session() as client:
        response = case.call_and_validate(base_url=hostile.url, session=client, timeout=60, checks=CHECKS)
        CASES[case.operation.label] += 1
        headers = {key: values[0] for key, values in response.headers.items()}  # lower-case keys, value lists
        body = response.json() if "json" in headers.get("content-type", "") else response.text
        assert_clear_error(response.status_code, body, f"{case.method} {case.path}")
        if response.status_code == 201 and headers.get("location", "").startswith(("/whep/", "/api/")):
            client.delete(hostile.url + headers["location"], headers=hostile.auth, timeout=30)
        if response.status_code == 201 and case.operation.label == "POST /api/sessions":
            client.delete(f"{hostile.url}/api/sessions/{body['id']}", headers=hostile.auth, timeout=30)


# --- SDP ------------------------------------------------------------------------------------------------------

@settings(FUZZ, max_examples=300)
@given(st.one_of(*(st.tuples(st.just(kind), st.one_of(sdp_bodies(offer), st.text(max_size=400).map(str.encode)))
                   for kind, offer in OFFERS.items())))
def test_an_offer_is_refused_by_name_or_answered_never_crashing_the_answer(kind_and_body: tuple[str, bytes]) -> None:
    """What the server does with an offer, without the server: ``check_sdp``, then aiortc's answer (a WHEP
    viewer's peer sends video and audio). Anything but an ``InputError`` would be a 500."""
    kind, body = kind_and_body
    CASES["SDP offers, checked and answered (no server)"] += 1

    async def apply(text: str) -> None:
        check_sdp(text)
        peer = new_peer()
        if kind == "whep":
            peer.addTrack(VideoStreamTrack())
            peer.addTrack(AudioStreamTrack())
        try:
            assert (await answer(peer, text)).startswith("v=0")
        finally:
            await peer.close()

    try:
        asyncio.run(apply(body.decode("utf-8", "replace")))
    except InputError as exc:
        assert "SDP offer" in str(exc) or "negotiation" in str(exc), exc


@pytest.mark.parametrize("endpoint", ["/whep", "/api/mic", "/api/webcam", "/whip"])
def test_offers_cut_short_or_mangled_are_refused_with_400(hostile: ServerProcess, watcher: Watcher,
                                                          endpoint: str) -> None:
    offer = OFFERS[endpoint.removeprefix("/").removeprefix("api/")]

    @settings(FUZZ, max_examples=25)
    @given(sdp_bodies(offer))
    def post(body: bytes) -> None:
        CASES[f"POST {endpoint} (SDP)"] += 1
        status, headers, payload = post_bytes(hostile, endpoint, body, "application/sdp")
        assert_clear_error(status, payload, endpoint)
        if status == 201:  # a cut that left a whole offer: the server answered it; hang up
            assert http("DELETE", hostile.url + headers["Location"], headers=hostile.auth)[0] in (200, 204)

    post()
    assert post_bytes(hostile, endpoint, offer.encode(), "text/plain")[0] == 400
    assert post_bytes(hostile, endpoint, offer.encode()[:10] + b"\xff\xfe" + offer.encode()[10:],
                      "application/sdp")[2]["error"].startswith("the SDP offer is not UTF-8")


def post_bytes(server: ServerProcess, path: str, body: bytes, content_type: str
               ) -> tuple[int, dict[str, str], Any]:
    """POST raw bytes as the operator; returns (status, headers, decoded JSON or text)."""
    response = requests.post(server.url + path, data=body, headers={"Content-Type": content_type, **server.auth},
                             timeout=60)
    kind = response.headers.get("Content-Type", "")
    return response.status_code, dict(response.headers), response.json() if "json" in kind else response.text


# --- WebSockets -----------------------------------------------------------------------------------------------

def control_messages() -> st.SearchStrategy[str]:
    rates = st.one_of(st.integers(-10, 200_000), st.sampled_from([8000, 11025, 22050, 44100, 96000, 96001]),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=4), st.booleans(), st.none())
    kinds = st.one_of(st.sampled_from(["start", "end", "interrupt", "status", "sing", ""]), st.integers(), st.none())
    return st.one_of(
        st.builds(lambda kind, rate: json.dumps({"type": kind, "sample_rate": rate}), kinds, rates),
        st.builds(lambda kind: json.dumps({"type": kind}), kinds),
        st.sampled_from(["null", "[]", "42", '"start"', "{", '{"type": "start"', "NaN"]),
        st.text(max_size=60),
    )


def pcm_packets() -> st.SearchStrategy[bytes]:
    tone = (np.sin(np.arange(8000) / 5.0) * 6000).astype("<i2").tobytes()
    return st.one_of(st.integers(0, len(tone)).map(lambda size: tone[:size]), st.binary(max_size=33))


def push_messages() -> st.SearchStrategy[list[tuple[str, Any]]]:
    return st.lists(st.one_of(control_messages().map(lambda text: ("text", text)),
                              pcm_packets().map(lambda packet: ("binary", packet))), max_size=10)


def test_push_socket_answers_junk_and_out_of_order_messages_and_stays_open(hostile: ServerProcess,
                                                                            watcher: Watcher) -> None:
    @settings(FUZZ, max_examples=40)
    @given(push_messages())
    def exchange(messages: list[tuple[str, Any]]) -> None:
        CASES["GET /api/push (WebSocket messages)"] += 1
        replies = asyncio.run(push_then_interrupt(hostile, messages))
        for reply in replies:
            assert isinstance(reply, dict) and reply.get("type") in REPLY_TYPES, reply
            if reply["type"] == "error":
                assert isinstance(reply["error"], str) and reply["error"]
        assert replies[-1]["type"] == "interrupted"  # still open, still answering, after all of it

    exchange()


async def push_then_interrupt(server: ServerProcess, messages: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send ``messages`` on the push socket, then an interrupt; the replies until the interrupt's (the replies
    keep their order, and every interrupt is answered)."""
    interrupts = 1 + sum(kind == "text" and '"interrupt"' in str(body) for kind, body in messages)
    replies: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(server.url + "/api/push", headers=server.auth) as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "ready"
        for kind, body in messages:
            await (socket.send_str(body) if kind == "text" else socket.send_bytes(body))
        await socket.send_json({"type": "interrupt"})
        answered = 0
        while answered < interrupts:
            message = await socket.receive(timeout=20)
            assert message.type == aiohttp.WSMsgType.TEXT, message
            replies.append(json.loads(message.data))
            answered += replies[-1].get("type") == "interrupted"
    return replies


def test_a_push_message_over_the_limit_closes_only_that_socket(hostile: ServerProcess) -> None:
    async def oversized() -> tuple[aiohttp.WSMsgType, int | None, dict[str, Any]]:
        async with aiohttp.ClientSession() as client:
            async with client.ws_connect(hostile.url + "/api/push", headers=hostile.auth) as socket:
                await socket.receive_json(timeout=10)
                await socket.send_bytes(b"\x00" * ((1 << 20) + 2))
                closing = await socket.receive(timeout=10)
            async with client.ws_connect(hostile.url + "/api/push", headers=hostile.auth) as socket:
                hello = await socket.receive_json(timeout=10)
        return closing.type, socket.close_code, hello

    CASES["GET /api/push (WebSocket messages)"] += 1
    kind, _, hello = asyncio.run(oversized())
    assert kind in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    assert hello["type"] == "ready"  # the next connection is served as usual


def test_events_socket_answers_messages_it_does_not_take_and_keeps_streaming(hostile: ServerProcess) -> None:
    @settings(FUZZ, max_examples=15)
    @given(st.lists(st.one_of(st.text(max_size=100).map(lambda text: ("text", text)),
                              st.binary(max_size=100).map(lambda data: ("binary", data))), min_size=1, max_size=6))
    def exchange(messages: list[tuple[str, Any]]) -> None:
        CASES["GET /api/events (WebSocket messages)"] += 1
        errors, stats = asyncio.run(events_exchange(hostile, messages))
        assert len(errors) == len(messages) and all("only sends" in error["error"] for error in errors)
        assert stats["type"] == "stats"  # and the feed goes on

    exchange()

    async def oversized() -> aiohttp.WSMsgType:
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(hostile.url + "/api/events", headers=hostile.auth) as socket:
            await socket.receive_json(timeout=10)
            await socket.send_str("x" * 10_000)
            while True:
                message = await socket.receive(timeout=10)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return message.type

    CASES["GET /api/events (WebSocket messages)"] += 1
    assert asyncio.run(oversized()) in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


def chat_comments() -> st.SearchStrategy[tuple[str, Any]]:
    """What a platform bridge might send: comments right and wrong, batches, junk, binary."""
    users = st.one_of(st.text(max_size=80), st.integers(), st.none())
    texts = st.one_of(st.text(max_size=120), st.just("x" * 2100), st.integers(), st.none())
    comment = st.builds(lambda user, text, when: {"user": user, "text": text, "time": when}, users, texts,
                        st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none(), st.text(max_size=3)))
    return st.one_of(comment.map(lambda body: ("text", json.dumps(body))),
                     st.lists(comment, max_size=4).map(lambda batch: ("text", json.dumps({"messages": batch}))),
                     st.sampled_from(["{", "null", "[]", '{"messages": 5}', "NaN"]).map(lambda text: ("text", text)),
                     st.text(max_size=60).map(lambda text: ("text", text)),
                     st.binary(max_size=60).map(lambda data: ("binary", data)))


def test_chat_ingest_answers_every_message_and_stays_open(hostile: ServerProcess, watcher: Watcher) -> None:
    @settings(FUZZ, max_examples=30)
    @given(st.lists(chat_comments(), min_size=1, max_size=6))
    def exchange(messages: list[tuple[str, Any]]) -> None:
        CASES["GET /api/chat/ingest (WebSocket messages)"] += 1
        replies = asyncio.run(ingest_exchange(hostile, messages))
        assert len(replies) == len(messages) + 1 and replies[-1]["type"] == "ok"  # a good one still goes in
        for reply in replies:
            assert reply["type"] in ("ok", "error") and (reply["type"] == "ok" or reply["error"]), reply

    exchange()


async def ingest_exchange(server: ServerProcess, messages: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Send ``messages`` to the chat ingest socket, then one good comment; every reply."""
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(server.url + "/api/chat/ingest", headers=server.auth) as socket:
        for kind, body in messages:
            await (socket.send_str(body) if kind == "text" else socket.send_bytes(body))
        await socket.send_json({"user": "fuzz", "text": "is it waterproof?"})
        return [await socket.receive_json(timeout=20) for _ in range(len(messages) + 1)]


async def events_exchange(server: ServerProcess, messages: list[tuple[str, Any]]
                          ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Send ``messages`` on the events socket; the error replies, then the next stats message."""
    errors: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as client, \
            client.ws_connect(server.url + "/api/events", headers=server.auth) as socket:
        assert (await socket.receive_json(timeout=10))["type"] == "hello"
        for kind, body in messages:
            await (socket.send_str(body) if kind == "text" else socket.send_bytes(body))
        while True:
            reply = await socket.receive_json(timeout=10)
            if reply["type"] == "error":
                errors.append(reply)
            elif reply["type"] == "stats" and len(errors) == len(messages):
                return errors, reply


# --- PCM at odd rates and odd sizes ---------------------------------------------------------------------------

@settings(FUZZ, max_examples=60)
@given(st.integers(8000, 96000), st.lists(st.integers(0, 3000), max_size=12))
def test_pcm_at_any_rate_in_any_packet_sizes_becomes_whole_frames_of_its_length(rate_hz: int,
                                                                                 sizes: list[int]) -> None:
    CASES["PCM chunker (no server)"] += 1
    chunker = StreamChunker(rate_hz)
    rng = np.random.default_rng(rate_hz)
    chunks = []
    for size in sizes:
        chunks += chunker.feed(rng.uniform(-0.5, 0.5, size).astype(np.float32))
    chunks += chunker.flush()
    seconds = sum(sizes) / rate_hz
    assert abs(len(chunks) - seconds * 25) <= 2, (len(chunks), seconds)
    assert all(chunk.playback.shape == (1920,) and chunk.features.shape == (640,) for chunk in chunks)
    assert all(np.isfinite(chunk.playback).all() and np.isfinite(chunk.features).all() for chunk in chunks)


# --- audio uploads --------------------------------------------------------------------------------------------

UPLOADS = {  # name: (body, content type, status, what the error says)
    "empty": (b"", "audio/wav", 400, "body is empty"),
    "header only": (wav_bytes(1.0)[:44], "audio/wav", 422, "no samples"),
    "a png named audio": (PNG, "audio/wav", 422, "no audio stream"),
    "text": (b"hello, this is not audio", "audio/mpeg", 422, "not decodable audio"),
    "wav sent as mp3": (wav_bytes(0.5), "audio/mpeg", 202, ""),
    "wav at 7 Hz": (wav_bytes(3.0, 7), "audio/wav", 422, "sample rate 7 Hz"),
    "wav at 500 kHz": (wav_bytes(0.01, 500_000), "audio/wav", 422, "sample rate 500000 Hz"),
    "wav at 11025 Hz, stereo": (wav_bytes(0.5, 11_025, channels=2), "audio/wav", 202, ""),
    "400 s of audio (over the queue)": (wav_bytes(400.0, 8000), "audio/wav", 413, "max_queued_speech_s"),
    # was decoded whole before the queue's limit was looked at: 2 hours of it (1.3 MB) took 920 MB
    "20 min of silence as FLAC": (flac_silence(1200), "audio/flac", 413, "max_queued_speech_s"),
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_audio_uploads_play_or_are_refused_with_the_reason(hostile: ServerProcess, watcher: Watcher,
                                                          name: str) -> None:
    body, content_type, status, message = UPLOADS[name]
    CASES["POST /api/play (audio files)"] += 1
    answer, _, payload = post_bytes(hostile, "/api/play", body, content_type)
    assert answer == status, (name, payload)
    assert_clear_error(answer, payload, name)
    assert message in (payload.get("error", "") if answer >= 400 else "")
    if status == 413:
        assert payload["limit"] == {"name": "max_queued_speech_s", "value": 300.0}
    hostile.post("/api/interrupt", {})


def test_audio_uploads_cut_short_or_changed_never_fail_the_server(hostile: ServerProcess, watcher: Watcher) -> None:
    @settings(FUZZ, max_examples=30)
    @given(audio_bodies(), st.sampled_from(["audio/wav", "audio/mpeg", "application/octet-stream", "image/png"]))
    def upload(body: bytes, content_type: str) -> None:
        CASES["POST /api/play (audio files)"] += 1
        status, _, payload = post_bytes(hostile, "/api/play", body, content_type)
        assert status in (202, 400, 413, 422), (status, payload)
        assert_clear_error(status, payload, "/api/play")

    upload()
    hostile.post("/api/interrupt", {})


# --- found by hand first --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "status", "message"), [
    ("hello\x00world", 202, ""),  # was 500: embedded null byte (espeak-ng's command line)
    ("hi \ud800 there", 202, ""),  # was 500: a lone surrogate cannot be encoded for the command line
    ("line one\nline two\ttabbed\x1b[2J", 202, ""),
    ("\x00\x01\x02", 422, "text is empty"),
    ("... !!! ---", 422, "nothing to speak"),
    ("", 400, "must be 1..5000 characters"),
])
def test_say_cleans_control_characters_and_refuses_what_cannot_be_spoken(hostile: ServerProcess, text: str,
                                                                         status: int, message: str) -> None:
    CASES["POST /api/say (text)"] += 1
    code, body = hostile.post("/api/say", {"text": text})
    assert code == status, body
    assert message in (body.get("error", "") if code >= 400 else "")
    if code == 202:
        said = [event["message"] for event in hostile.get("/api/log")[1]["events"] if event["kind"] == "speech"]
        assert said and not any(ord(char) < 32 for char in said[-1])  # the log has no control characters
    hostile.post("/api/interrupt", {})


@pytest.mark.parametrize(("body", "message"), [
    ('{"yaw": NaN}', "NaN is not a JSON number"),  # was 200
    ('{"yaw": 1e308}', '"yaw" must be in -90.0..90.0'),  # was 200
    ('{"yaw": 1e400}', "out of range"),
    ('{"pitch": -91}', '"pitch" must be in -90.0..90.0'),
    ('{"roll": 180.5}', '"roll" must be in -180.0..180.0'),
    ('{"mode": "still", "base_index": true}', '"base_index" must be integer'),  # was 200: True indexed the frames
    ('{"mode": "still", "base_index": -1}', '"base_index" must be in 0..'),
    ('{"yaw": "left"}', '"yaw" must be number'),
    ('{"yaw": 10, "yew": 3}', "unknown field 'yew'"),
])
def test_pose_angles_must_be_finite_and_sane(hostile: ServerProcess, body: str, message: str) -> None:
    CASES["POST /api/pose (angles)"] += 1
    status, payload = http("POST", hostile.url + "/api/pose", body, headers=hostile.auth)
    assert status == 400 and message in payload["error"], payload
    assert hostile.post("/api/pose", {"yaw": 90, "pitch": -90, "roll": 180})[0] == 200  # the edges are fine
    assert hostile.post("/api/pose", {"mode": "still"})[0] == 200


@pytest.mark.parametrize(("path", "message"), [
    ("../../x.mp4", "must not contain '..'"),  # was written wherever it pointed
    ("shows/../../x.mp4", "must not contain '..'"),
    ("/tmp/x.mp4", "is absolute"),
    ("C:/x.mp4", "is absolute"),
    (".hidden.mp4", "starting with a letter or digit"),
    ("a b.mp4", "1-100 of A-Z a-z 0-9 . _ -"),
    ("x\x00.mp4", "1-100 of A-Z a-z 0-9 . _ -"),
    ("a/b/c/d/e.mp4", "up to 4"),
    ("show.mkv", "must end in .mp4"),
    ("", 'needs "path"'),
])
def test_recording_paths_stay_inside_the_recordings_directory(hostile: ServerProcess, path: str,
                                                              message: str) -> None:
    CASES["POST /api/outputs (recording paths)"] += 1
    status, body = hostile.post("/api/outputs", {"kind": "record", "path": path})
    assert status == 400 and message in body["error"], body


def test_a_recording_path_inside_is_created_and_a_link_out_is_refused(hostile: ServerProcess,
                                                                     tmp_path: Path) -> None:
    CASES["POST /api/outputs (recording paths)"] += 2
    root = Path(hostile.get("/api/outputs")[1]["recordings_dir"])
    status, output = hostile.post("/api/outputs", {"kind": "record", "path": "2026/11/show.mp4"})
    assert status == 201 and output["target"] == str(root / "2026" / "11" / "show.mp4"), output
    wait_for(lambda: next(o for o in hostile.get("/api/outputs")[1]["outputs"]
                          if o["id"] == output["id"])["video_frames"] > 0, 20)
    assert hostile.delete(f"/api/outputs/{output['id']}")[0] == 200
    assert (root / "2026" / "11" / "show.mp4").is_file()
    (root / "out").symlink_to(tmp_path)  # a link planted inside the directory must not lead out of it
    status, body = hostile.post("/api/outputs", {"kind": "record", "path": "out/show.mp4"})
    assert status == 400 and "link" in body["error"] and not list(tmp_path.iterdir())


def wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout_s} s"
        time.sleep(0.1)


def test_a_token_that_is_not_utf8_is_just_wrong(hostile: ServerProcess) -> None:
    """Was 500: the header's bytes arrive as surrogates, and encoding them for the comparison raised."""
    CASES["GET /api/stats (raw Authorization bytes)"] += 2
    host, port = hostile.url.removeprefix("http://").split(":")
    for request in (b"GET /api/stats HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n",
                    b"GET /api/stats?token=%ff%fe HTTP/1.1\r\n"):
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(request + b"Host: x\r\nConnection: close\r\n\r\n")
            answer = b"".join(iter(lambda: raw.recv(4096), b""))  # until the server closes
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), head
        assert "bearer token" in json.loads(body)["error"]


# --- and the viewer watched all along -----------------------------------------------------------------------

def test_zz_the_viewer_kept_receiving_frames_throughout(watcher: Watcher, hostile: ServerProcess,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    finished_at = time.monotonic()
    media = watcher.stop()  # it receives for another second, then hangs up
    arrivals = np.array(media.video_arrival_s)
    assert arrivals.size and arrivals[-1] > finished_at, "no frames after the fuzzing"
    watched_s = arrivals[-1] - arrivals[0]
    longest_gap_s = float(np.diff(arrivals).max()) if arrivals.size > 1 else math.inf
    assert longest_gap_s < 3.0, f"the stream stalled for {longest_gap_s:.1f} s while it was fuzzed"
    for output in hostile.get("/api/outputs")[1]["outputs"]:
        hostile.delete(f"/api/outputs/{output['id']}")
    with capsys.disabled():
        print(f"\nhostile input: {sum(CASES.values())} cases over {len(CASES)} endpoints; the viewer received "
              f"{arrivals.size} frames in {watched_s:.0f} s, longest gap {longest_gap_s * 1000:.0f} ms")
        for endpoint, count in sorted(CASES.items()):
            print(f"  {count:5d}  {endpoint}")
