"""Bad networks: a viewer behind a lossy, jittery or dead link (``lossy_link.LossyLink``, a UDP relay in user
space: this kernel has no netem) keeps what it can, recovers when the link does, and never costs the other
viewers their frame rate or their latency; a viewer that has vanished is dropped by the server.

The lossless reference viewer's frames are the truth: a frame the lossy viewer shows is clean when it matches the
reference's frame of the same pts. The two viewers' pts start at different frames (aiortc's receiver counts from
the first frame it got), so the offset between them is found on the clean lead-in, where every frame matches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from stream.whep_client import ReceivedMedia, WhepViewer
from tests.helpers import AUTH, ServerProcess
from tests.stream.lossy_link import LossyLink, VideoFrameSeen

VIEWER_TIMEOUT_S = 4.0  # the server's serve.viewer_timeout_s here (10 s by default), so the test is short
PTS_PER_FRAME = 3600  # 90 kHz at 25 fps
# How much the other viewers may lose: measured fps ratios 0.99-1.0 and p95 lateness +0-46 ms on the 2-core box,
# and down to 0.867 and up to +191 ms with seven times as many busy processes as cores; a viewer held up by
# another's link would lose whole seconds.
MIN_FPS_RATIO = 0.75
LATENESS_MARGIN_MS = 400
CLEAN_PSNR_DB = 30.0  # a frame matching the reference's: two VP8 encodes of one picture measure 36-108 dB here
SPEECH = ("I keep on talking while the network is bad, so that every frame of my mouth differs from the one "
          "before it. Packets go missing and arrive late, and still the picture has to come back clean. "
          "Then I keep on talking for a little while longer, until the measurement is over and done.")


@pytest.fixture(scope="module")
def netserver(pack: Path, artifact: Path) -> Iterator[ServerProcess]:
    """A server of its own with a short silent-viewer timeout."""
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env={"TWINCAST_SERVE_VIEWER_TIMEOUT_S": str(VIEWER_TIMEOUT_S)}) as process:
        yield process


def half(rgb: np.ndarray) -> np.ndarray:
    """Every other pixel: enough to tell a clean picture from a damaged one, a quarter of the memory."""
    return rgb[::2, ::2].copy()


async def request_keyframe(viewer: WhepViewer) -> None:
    """Send a PLI for the video stream, as a browser does when its picture is damaged.

    aiortc's receiver sends one by itself only when its jitter buffer overflows (512 packets, ~10 s of this
    stream) or its decoder fails, so the request goes through the receiver's own method.
    """
    for receiver in viewer.peer.getReceivers():
        if receiver.track is not None and receiver.track.kind == "video":
            for source in receiver.getSynchronizationSources():
                await receiver._send_rtcp_pli(source.source)


def window(media: ReceivedMedia, start_s: float, end_s: float) -> np.ndarray:
    """Indices of the frames that arrived in [start_s, end_s)."""
    arrival = np.asarray(media.video_arrival_s)
    return np.flatnonzero((arrival >= start_s) & (arrival < end_s))


def fps(media: ReceivedMedia, start_s: float, end_s: float) -> float:
    """Frames per second received in [start_s, end_s)."""
    return len(window(media, start_s, end_s)) / (end_s - start_s)


def lateness_ms(media: ReceivedMedia, start_s: float, end_s: float, origin_s: float) -> np.ndarray:
    """How late each frame of [start_s, end_s) arrived for its pts, in ms after ``origin_s`` (arrival − pts on
    this viewer's own timeline; only differences between windows of one viewer mean anything)."""
    index = window(media, start_s, end_s)
    arrival = np.asarray(media.video_arrival_s)[index]
    pts_s = np.asarray(media.video_pts)[index] / 90_000
    return (arrival - pts_s - origin_s) * 1000


def lateness_origin(media: ReceivedMedia, start_s: float, end_s: float) -> float:
    """The median arrival − pts of a window: the zero that ``lateness_ms`` measures from."""
    index = window(media, start_s, end_s)
    return float(np.median(np.asarray(media.video_arrival_s)[index] - np.asarray(media.video_pts)[index] / 90_000))


def psnr_db(first: np.ndarray, second: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two 8-bit pictures (capped at 100 dB for identical ones)."""
    mse = float(np.mean((first.astype(np.float32) - second.astype(np.float32)) ** 2))
    return 100.0 if mse < 1e-10 else 10 * np.log10(255.0**2 / mse)


def pts_offset(lossy: ReceivedMedia, reference: ReceivedMedia, until_s: float) -> int:
    """The frame offset k with lossy frame p showing the reference's frame p + k, from frames that arrived before
    ``until_s`` (both links clean): roughly, frames arriving together are the same frame; exactly, the k near
    that whose frames match best."""
    reference_by_pts = {pts // PTS_PER_FRAME: frame for pts, frame in zip(reference.video_pts, reference.video,
                                                                          strict=True)}
    reference_arrival = np.asarray(reference.video_arrival_s)
    reference_index = np.asarray(reference.video_pts) // PTS_PER_FRAME
    lead = window(lossy, 0.0, until_s)
    rough = int(np.median([reference_index[np.argmin(np.abs(reference_arrival - lossy.video_arrival_s[i]))]
                           - lossy.video_pts[i] // PTS_PER_FRAME for i in lead]))
    best: tuple[float, int] | None = None
    for offset in range(rough - 5, rough + 6):
        errors = [np.mean((lossy.video[i].astype(np.float32) - reference_by_pts[p].astype(np.float32)) ** 2)
                  for i in lead if (p := lossy.video_pts[i] // PTS_PER_FRAME + offset) in reference_by_pts]
        if len(errors) >= 10 and (best is None or float(np.mean(errors)) < best[0]):
            best = (float(np.mean(errors)), offset)
    assert best is not None, "no overlap between the two viewers' frames"
    return best[1]


def clean_frames(lossy: ReceivedMedia, reference: ReceivedMedia, offset: int) -> list[tuple[float, float]]:
    """(arrival, PSNR against the reference's frame of the same pts) for each lossy frame the reference has."""
    reference_by_pts = {pts // PTS_PER_FRAME: frame for pts, frame in zip(reference.video_pts, reference.video,
                                                                          strict=True)}
    rows = []
    for frame, pts, arrival in zip(lossy.video, lossy.video_pts, lossy.video_arrival_s, strict=True):
        match = reference_by_pts.get(pts // PTS_PER_FRAME + offset)
        if match is not None:
            rows.append((arrival, psnr_db(frame, match)))
    return rows


async def viewers_now(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url + "/healthz") as response:
        return int((await response.json())["viewers"])


async def until_quiet(http: aiohttp.ClientSession, url: str) -> None:
    """Wait (at most 30 s) until the twin is silent with nothing queued."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        async with http.get(url + "/api/stats", headers=AUTH) as response:
            stats = await response.json()
        if not stats["speaking"] and stats["queue"]["speech_frames"] == 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the twin did not fall silent within 30 s")


def keyframes_after(frames: list[VideoFrameSeen], requests_s: list[float], threshold_bytes: float,
                    within_s: float) -> list[float | None]:
    """For each request, the delay to the first frame of at least ``threshold_bytes`` delivered within
    ``within_s`` after it (None when there is none)."""
    delays: list[float | None] = []
    for asked_s in requests_s:
        found = [frame.first_s - asked_s for frame in frames
                 if 0.0 <= frame.first_s - asked_s < within_s and frame.size_bytes >= threshold_bytes]
        delays.append(min(found) if found else None)
    return delays


class _Endpoint(asyncio.DatagramProtocol):
    """A UDP socket that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


def test_the_lossy_link_stands_between_the_peers() -> None:
    """The relay rewrites each peer's candidates to its own ports (dropping IPv6 and TCP ones, which would go
    around it), carries datagrams both ways from the addresses each peer was told, and drops a seeded share, or
    all of them."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        client_transport, client = await loop.create_datagram_endpoint(_Endpoint, local_addr=("127.0.0.1", 0))
        server_transport, server = await loop.create_datagram_endpoint(_Endpoint, local_addr=("127.0.0.1", 0))
        client_port = client_transport.get_extra_info("sockname")[1]
        server_port = server_transport.get_extra_info("sockname")[1]
        try:
            async with LossyLink(seed=5) as link:
                offer = await link.rewrite_offer(
                    f"v=0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 {client_port} typ host\r\n"
                    "a=candidate:2 1 udp 2130706431 ::1 9 typ host\r\n"
                    "a=candidate:3 1 tcp 1518280447 127.0.0.1 9 typ host tcptype passive\r\n")
                answer = await link.rewrite_answer(
                    f"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 97\r\na=ssrc:1234 cname:x\r\n"
                    f"a=candidate:1 1 udp 2130706431 127.0.0.1 {server_port} typ host\r\n")
                (offered,) = [line.split() for line in offer.splitlines() if line.startswith("a=candidate")]
                (answered,) = [line.split() for line in answer.splitlines() if line.startswith("a=candidate")]
                assert offered[4] == answered[4] == "127.0.0.1"
                assert {int(offered[5]), int(answered[5])}.isdisjoint({client_port, server_port})
                assert link.media.video_ssrcs == {1234}
                to_server, to_client = ("127.0.0.1", int(answered[5])), ("127.0.0.1", int(offered[5]))
                for index in range(10):  # clean: all arrive, each from the address the other side was told
                    client_transport.sendto(b"up%d" % index, to_server)
                    server_transport.sendto(b"down%d" % index, to_client)
                await _until(lambda: len(server.received) == len(client.received) == 10)
                assert {addr for _, addr in server.received} == {to_client}
                assert {addr for _, addr in client.received} == {to_server}
                link.loss = 0.3
                for index in range(1000):
                    server_transport.sendto(b"lossy%d" % index, to_client)
                    if index % 20 == 19:
                        await asyncio.sleep(0.002)  # within the socket buffers: the kernel drops nothing
                await _until(lambda: link.counts.down.forwarded + link.counts.down.lost == 1010)
                assert 240 < link.counts.down.lost < 360, link.counts  # 30 % of 1000, seeded
                link.loss, link.blackhole = 0.0, True
                client_transport.sendto(b"gone", to_server)
                await _until(lambda: link.counts.up.blackholed == 1)
                assert len(server.received) == 10
                with pytest.raises(ValueError, match="loss 1.5 must be a fraction"):
                    link.loss = 1.5
        finally:
            client_transport.close()
            server_transport.close()

    asyncio.run(scenario())


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "not within the deadline"
        await asyncio.sleep(0.01)


def test_a_keyframe_request_is_answered_for_that_viewer_alone(netserver: ServerProcess) -> None:
    """A PLI gets the asking viewer a keyframe at once, and nobody else. The viewers share one encoder
    (stream.encode_once): the asking viewer is repaired with a keyframe of its own and rejoins the shared packets
    at the next shared keyframe, which comes at most every REJOIN_EVERY_S (5 s). (Before per-viewer copies, the
    relay's shared frame carried every forced keyframe to every viewer: 10 of 10.)"""
    requests = 10

    async def scenario() -> tuple[LossyLink, LossyLink, float]:
        async with aiohttp.ClientSession() as http, LossyLink(seed=1) as watched, LossyLink(seed=2) as asking_link:
            await until_quiet(http, netserver.url)
            other = WhepViewer(netserver.url, keep_video=1, rewrite_offer=watched.rewrite_offer,
                               rewrite_answer=watched.rewrite_answer)
            asking = WhepViewer(netserver.url, keep_video=1, rewrite_offer=asking_link.rewrite_offer,
                                rewrite_answer=asking_link.rewrite_answer)
            await other.connect(http)
            await asking.connect(http)
            await asyncio.wait_for(asyncio.gather(other.media.first_video.wait(), asking.media.first_video.wait()),
                                   10)
            await asyncio.sleep(6.0)  # the encoders' bitrate settles (a bitrate change makes a keyframe too)
            started = time.monotonic()
            for _ in range(requests):
                await request_keyframe(asking)
                await asyncio.sleep(0.7)
            await other.hang_up(http)
            await asking.hang_up(http)
            return watched, asking_link, started

    watched, asking_link, started = asyncio.run(scenario())
    asked = asking_link.media.keyframe_requests_s
    assert len(asked) == requests  # the relay saw each PLI reach the server
    quiet = [frame.size_bytes for frame in asking_link.media.frames() if started - 2.0 <= frame.first_s < started]
    threshold = 5 * float(np.median(quiet))  # a keyframe of this idle picture is 8-30× an ordinary frame
    answered = keyframes_after(asking_link.media.frames(), asked, threshold, 0.5)
    leaked = keyframes_after(watched.media.frames(), asked, threshold, 0.5)
    assert all(delay is not None for delay in answered), (answered, threshold)
    # The other viewer sees the shared stream's rejoin keyframes (at most one per 5 s: two in these 7 s) and, on a
    # loaded machine, a repair of its own now and then (measured 3); before encode-once's repairs, 10 of 10.
    assert sum(delay is not None for delay in leaked) <= 4, (leaked, threshold)
    print(f"keyframe after a PLI in {max(d for d in answered if d is not None) * 1000:.0f} ms at most "
          f"(threshold {threshold:.0f} B); the other viewer got {sum(d is not None for d in leaked)}")


@pytest.mark.parametrize("loss", [0.1, 0.3])
def test_a_lossy_viewer_keeps_receiving_recovers_and_slows_nobody(netserver: ServerProcess, loss: float) -> None:
    """Behind ``loss`` packet loss and 0-200 ms jitter (both ways), a viewer keeps receiving clean frames; when
    the loss stops its picture is clean within 2 s; the lossless viewer's frame rate and lateness are what they
    were before the lossy viewer came."""
    marks: dict[str, float] = {}

    async def scenario() -> tuple[WhepViewer, WhepViewer, LossyLink]:
        async with aiohttp.ClientSession() as http, LossyLink(seed=7) as link:
            reference = WhepViewer(netserver.url, reduce=half)
            await reference.connect(http)
            await asyncio.wait_for(reference.media.first_video.wait(), 10)
            async with http.post(netserver.url + "/api/say", json={"text": SPEECH}, headers=AUTH) as response:
                assert response.status == 202, await response.text()  # ~17 s of speech: the mouth moves throughout
            await asyncio.sleep(0.5)
            marks["alone"] = time.monotonic()
            await asyncio.sleep(3.0)  # the reference alone: its frame rate and lateness without the lossy viewer
            lossy = WhepViewer(netserver.url, reduce=half, rewrite_offer=link.rewrite_offer,
                               rewrite_answer=link.rewrite_answer)
            await lossy.connect(http)
            await asyncio.wait_for(lossy.media.first_video.wait(), 10)
            marks["clean"] = time.monotonic()
            await asyncio.sleep(2.0)  # a clean lead-in: the two viewers' pts offset
            marks["loss"] = time.monotonic()
            link.loss, link.jitter_ms = loss, 200.0
            await asyncio.sleep(5.0)
            link.loss, link.jitter_ms = 0.0, 0.0
            marks["healed"] = time.monotonic()
            await asyncio.sleep(3.0)
            marks["end"] = time.monotonic()
            await lossy.hang_up(http)
            await reference.hang_up(http)
            return reference, lossy, link

    reference, lossy, link = asyncio.run(scenario())
    ref, got = reference.media, lossy.media
    assert link.counts.down.lost > 20 and link.counts.up.lost > 1, link.counts  # the loss was real, both ways
    assert got.packets_asked_again > 0  # the viewer asked again for lost packets (measured 49-103 NACKs)

    # The lossy viewer kept receiving, and every picture it decoded is a clean one.
    during = window(got, marks["loss"], marks["healed"])
    arrivals = np.asarray(got.video_arrival_s)[during]
    assert len(during) >= 10 * 5.0, len(during)  # measured 103-108 frames in the 5 s (of 125 sent)
    # No freeze: the longest wait between frames measured 0.22-0.44 s at 30 % loss, also beside six busy processes
    # (0.3-1.9 s before the viewer asked again for packets whose NACK or retransmission was lost, as browsers do).
    assert np.diff(arrivals).max() < 1.5, np.diff(arrivals).max()
    offset = pts_offset(got, ref, marks["loss"])
    scored = clean_frames(got, ref, offset)
    while_lossy = [db for at, db in scored if marks["loss"] <= at < marks["healed"]]
    assert len(while_lossy) >= 0.8 * len(during) and min(while_lossy) >= CLEAN_PSNR_DB, sorted(while_lossy)[:5]

    # Once the link heals, the picture is clean within 2 s: the first clean frame from which all are clean.
    after = [(at, db) for at, db in scored if at >= marks["healed"]]
    assert len(after) > 25, len(after)
    dirty = [at for at, db in after if db < CLEAN_PSNR_DB]
    clean_from = next((at for at, db in after if at > max(dirty, default=0.0)), None)
    assert clean_from is not None, after[-10:]
    recovery_s = clean_from - marks["healed"]
    assert recovery_s < 2.0, (recovery_s, after[:30])

    # The lossless viewer was not slowed: its frame rate and lateness, alone and beside the lossy viewer.
    origin = lateness_origin(ref, marks["alone"], marks["clean"])
    alone = lateness_ms(ref, marks["alone"], marks["clean"], origin)
    beside = lateness_ms(ref, marks["loss"], marks["healed"], origin)
    fps_ratio = fps(ref, marks["loss"], marks["healed"]) / fps(ref, marks["alone"], marks["clean"])
    assert fps_ratio > MIN_FPS_RATIO, fps_ratio
    assert np.percentile(beside, 95) < np.percentile(alone, 95) + LATENESS_MARGIN_MS, (
        np.percentile(alone, [50, 95]), np.percentile(beside, [50, 95]))
    lossy_late = lateness_ms(got, marks["loss"], marks["healed"], lateness_origin(got, marks["clean"], marks["loss"]))
    print(f"loss {loss:.0%}: lossy viewer {len(during) / 5.0:.1f} fps, min PSNR {min(while_lossy):.1f} dB, "
          f"lateness p50 {np.median(lossy_late):.0f} ms; clean {recovery_s:.2f} s after the loss stopped; "
          f"reference fps ratio {fps_ratio:.3f}, lateness p95 {np.percentile(alone, 95):.0f} → "
          f"{np.percentile(beside, 95):.0f} ms; {got.packets_asked_again} NACKs repeated; link {link.counts}")


def test_a_vanished_viewer_is_dropped_and_slows_nobody(netserver: ServerProcess) -> None:
    """A viewer whose link goes dead (no RTCP receiver report comes back) is dropped after the server's
    ``viewer_timeout_s``, long before ICE consent would expire (~30 s); the other viewer streams on."""
    marks: dict[str, Any] = {}

    async def scenario() -> tuple[WhepViewer, LossyLink]:
        async with aiohttp.ClientSession() as http, LossyLink(seed=3) as link:
            reference = WhepViewer(netserver.url, keep_video=1)
            vanishing = WhepViewer(netserver.url, keep_video=1, rewrite_offer=link.rewrite_offer,
                                   rewrite_answer=link.rewrite_answer)
            await reference.connect(http)
            await vanishing.connect(http)
            await asyncio.wait_for(asyncio.gather(reference.media.first_video.wait(),
                                                  vanishing.media.first_video.wait()), 10)
            marks["before"] = time.monotonic()
            await asyncio.sleep(3.0)
            assert await viewers_now(http, netserver.url) == 2
            link.blackhole = True
            marks["dead"] = time.monotonic()
            deadline = marks["dead"] + VIEWER_TIMEOUT_S + 5.0
            while await viewers_now(http, netserver.url) != 1:
                assert time.monotonic() < deadline, "the vanished viewer was not dropped"
                await asyncio.sleep(0.1)
            marks["dropped"] = time.monotonic()
            await asyncio.sleep(1.0)
            marks["end"] = time.monotonic()
            await vanishing.hang_up(http)
            await reference.hang_up(http)
            return reference, link

    reference, link = asyncio.run(scenario())
    dropped_after_s = marks["dropped"] - marks["dead"]
    # Silent since its last report (up to ~1.5 s before the link died), checked about once a second.
    assert VIEWER_TIMEOUT_S - 1.6 < dropped_after_s < VIEWER_TIMEOUT_S + 2.5, dropped_after_s
    assert link.counts.down.blackholed > 50, link.counts
    told = [e["message"] for e in netserver.get("/api/log")[1]["events"] if e["kind"] == "warning"]
    assert any("silent for" in message and "dropped" in message for message in told), told[-5:]
    ref = reference.media
    fps_ratio = fps(ref, marks["dead"], marks["end"]) / fps(ref, marks["before"], marks["dead"])
    assert fps_ratio > MIN_FPS_RATIO, fps_ratio
    origin = lateness_origin(ref, marks["before"], marks["dead"])
    before = lateness_ms(ref, marks["before"], marks["dead"], origin)
    meanwhile = lateness_ms(ref, marks["dead"], marks["end"], origin)
    assert np.percentile(meanwhile, 95) < np.percentile(before, 95) + LATENESS_MARGIN_MS, (
        np.percentile(before, [50, 95]), np.percentile(meanwhile, [50, 95]))
    print(f"vanished viewer dropped {dropped_after_s:.1f} s after its link died (timeout {VIEWER_TIMEOUT_S} s); "
          f"reference fps ratio {fps_ratio:.3f}, lateness p95 {np.percentile(before, 95):.0f} → "
          f"{np.percentile(meanwhile, 95):.0f} ms")
