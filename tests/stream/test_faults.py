"""Faults a live show meets in its hours on air, each made real against a running server: a failing part
degrades the stream visibly and recovers; it never stops it.

The engine fault is the one injected by hand (``tests.stream.flaky_engine`` wraps the real engine, since an
ONNX Runtime failure cannot be triggered on demand); text to speech, the RTMP ingest, SIGTERM and the disk fail
for real: espeak-ng goes missing or rejects its voice, nginx stops, the process is signalled, a small file system
fills up.
"""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from avatar.pack import AvatarPack
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import TWINCAST, ServerProcess, crop_box, measured
from tests.stream.rtmp_ingest import RtmpIngest, ffprobe
from tests.stream.test_player_chromium import CHROMIUM, CHROMIUM_ARGS, keep_screenshot

REPO = Path(__file__).resolve().parents[2]
ESPEAK = shutil.which("espeak-ng") or "/usr/bin/espeak-ng"


def tone_wav(seconds: float = 2.0, rate_hz: int = 16_000) -> bytes:
    """A WAV file of a 220 Hz tone (audio that needs no text to speech)."""
    samples = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate_hz)) / rate_hz) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate_hz)
        handle.writeframes(samples.tobytes())
    return buffer.getvalue()


def post_bytes(server: ServerProcess, path: str, payload: bytes, content_type: str) -> tuple[int, Any]:
    """POST raw bytes as the operator; returns (status, decoded JSON)."""
    request = urllib.request.Request(server.url + path, data=payload, method="POST",
                                     headers={"Content-Type": content_type, **server.auth})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def recordings_dir(server: ServerProcess) -> Path:
    """Where the server puts a recording named by a bare file name (its ``recordings_dir`` where it reports one;
    else its working directory)."""
    listed = server.get("/api/outputs")[1]
    return Path(server.cwd or ".", listed.get("recordings_dir", ".")).resolve()


def session_stats(server: ServerProcess) -> dict[str, Any]:
    """The default session's figures."""
    stats = server.get("/api/stats")[1]
    return dict(stats["sessions"][stats["default_session"]])


def events(server: ServerProcess, since: float = 0.0) -> list[dict[str, Any]]:
    """Event-log entries at or after ``since`` (wall clock)."""
    return [event for event in server.get("/api/log")[1]["events"] if event["at"] >= since]


def arrival_rate(media: ReceivedMedia, start: float, end: float) -> tuple[float, float]:
    """Video frames per second that arrived in [start, end] (monotonic), and the longest gap between two.

    The tests ask for more than 15 fps without a gap of a second: the stream went on (a stopped or frozen one
    sends nothing). They measure 22-25 fps even with other suites loading the two cores to 17.
    """
    arrivals = np.array([t for t in media.video_arrival_s if start <= t <= end])
    assert arrivals.size > 2, f"no video arrived between {start:.1f} and {end:.1f}"
    return (arrivals.size - 1) / (arrivals[-1] - arrivals[0]), float(np.diff(arrivals).max())


# --- the engine fails mid-stream -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flaky(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    """The real server on the real engine, wrapped to fail while the returned control file exists; the head
    follows the footage loop."""
    control = tmp_path_factory.mktemp("flaky") / "engine-fails"
    with ServerProcess("--control", str(control), "--avatar", str(pack), "--model", str(artifact), "--pose", "loop",
                       command=[sys.executable, "-m", "tests.stream.flaky_engine"],
                       env={"PYTHONPATH": str(REPO)}) as process:
        yield process, control
    control.unlink(missing_ok=True)


def nearest_base(frames: np.ndarray, base_small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each received frame, the nearest base frame of the loop (at 64², whole picture) and its distance."""
    small = np.stack([cv2.resize(frame, (64, 64), interpolation=cv2.INTER_AREA) for frame in frames]).astype(np.float32)
    distance = np.abs(small[:, None] - base_small[None]).mean(axis=(2, 3, 4))
    return distance.argmin(axis=1), distance.min(axis=1)


def test_a_failing_engine_degrades_to_the_idle_loop_and_recovers(flaky: tuple[ServerProcess, Path],
                                                                  pack: Path) -> None:
    server, control = flaky
    base = AvatarPack.load(pack).base_frames()
    base_small = np.stack([cv2.resize(f, (64, 64), interpolation=cv2.INTER_AREA) for f in base]).astype(np.float32)
    marks: dict[str, Any] = {}
    first_line = len(server.lines)

    async def fail_then_recover() -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1.5)
        marks["wall"] = time.time()
        marks["fail"] = time.monotonic()
        control.touch()
        marks["degraded"] = await loop.run_in_executor(None, wait_until, lambda: session_stats(server)["degraded"],
                                                       5, "the session says it is degraded")
        marks["flagged"] = time.monotonic()
        await asyncio.sleep(3.0)
        marks["during"] = await loop.run_in_executor(None, session_stats, server)
        marks["recover"] = time.monotonic()
        control.unlink()
        await loop.run_in_executor(None, wait_until, lambda: session_stats(server)["degraded"] is None, 10,
                                   "the degraded flag clears once the engine renders again")
        marks["recovered"] = time.monotonic()

    media = asyncio.run(pull(server.url, 2.0, during=fail_then_recover))
    arrival = np.array(media.video_arrival_s)
    frames = np.stack(media.video)

    # The stream never stopped: while the engine failed, frames kept coming at the frame rate, without a gap.
    failing = (arrival > marks["fail"] + 0.6) & (arrival < marks["recover"])
    fps, gap_s = arrival_rate(media, marks["fail"] + 0.6, marks["recover"])
    assert fps > 15 and gap_s < 1.0, (fps, gap_s)

    # ... and they were the footage loop's own base frames (mouth as filmed), moving on, not a frozen render.
    index, distance = nearest_base(frames[failing], base_small)
    assert np.median(distance) < 3.0, distance
    mouth = crop_box(pack, (0.62, 0.9), (0.3, 0.7))
    mouth_error = [np.abs(frame[mouth].astype(np.float32) - base[i][mouth]).mean()
                   for frame, i in zip(frames[failing], index, strict=True)]
    assert np.median(mouth_error) < 4.0, mouth_error
    assert len(set(index.tolist())) > 0.5 * len(index), index  # the loop advances about a frame per frame

    # Before and after, the renders: the mouth is the model's, not the film's.
    normal = (arrival < marks["fail"]) | (arrival > marks["recovered"] + 0.3)
    index_normal, _ = nearest_base(frames[normal], base_small)
    rendered_error = [np.abs(frame[mouth].astype(np.float32) - base[i][mouth]).mean()
                      for frame, i in zip(frames[normal], index_normal, strict=True)]
    assert np.median(rendered_error) > 2 * np.median(mouth_error), (rendered_error, mouth_error)

    # The operator saw it: degraded with the engine's reason and since when, a warning, then the recovery.
    degraded = marks["degraded"]
    assert "the engine failed: InjectedEngineFault: injected engine failure" in degraded["reason"], degraded
    assert marks["wall"] - 0.5 < degraded["since"] < marks["wall"] + 2.0
    assert marks["during"]["failed_frames"] > 25 and marks["during"]["idle_frames"] > 25, marks["during"]
    told = [(e["level"], e["message"]) for e in events(server, marks["wall"]) if e["session"] == "default"]
    # (A loaded machine may add degradations of its own, "no frame rendered in time": only the engine's is counted.)
    warned = [i for i, (level, message) in enumerate(told)
              if level == "warning" and message.startswith("degraded: the engine failed: InjectedEngineFault")]
    recovered = [i for i, (_, message) in enumerate(told) if message.startswith("recovered: rendering again")]
    assert len(warned) == 1 and recovered and recovered[0] > warned[0], told
    after = session_stats(server)
    assert after["degraded"] is None and after["fps"] > 15
    measured("engine_fault", viewer_fps_while_failing=fps, longest_gap_s=gap_s,
             flagged_after_s=marks["flagged"] - marks["fail"], cleared_after_s=marks["recovered"] - marks["recover"],
             mouth_vs_base_idle=float(np.median(mouth_error)), mouth_vs_base_rendered=float(np.median(rendered_error)),
             distinct_base_frames=len(set(index.tolist())), frames_while_failing=len(index),
             failed_frames=marks["during"]["failed_frames"], idle_frames=marks["during"]["idle_frames"])
    # One traceback in the server's log for the whole failure, not one per frame; and a line when it recovers.
    logged = server.lines[first_line:]
    assert sum("render batch of" in line for line in logged) == 1, logged
    assert any("renders again after" in line for line in logged), logged


def test_a_stalled_engine_degrades_to_the_idle_loop_and_recovers(flaky: tuple[ServerProcess, Path]) -> None:
    server, control = flaky
    since = time.time()
    marks: dict[str, Any] = {}

    async def hang_then_return() -> None:
        loop = asyncio.get_running_loop()
        control.write_text("hang")  # the engine call blocks, as a wedged GPU would: nothing fails, nothing comes
        marks["hang"] = time.monotonic()
        marks["degraded"] = await loop.run_in_executor(None, wait_until, lambda: session_stats(server)["degraded"],
                                                       10, "the session says it is degraded")
        marks["flagged"] = time.monotonic()
        await asyncio.sleep(1.5)
        marks["return"] = time.monotonic()
        control.unlink()
        await loop.run_in_executor(None, wait_until, lambda: session_stats(server)["degraded"] is None, 15,
                                   "the degraded flag clears once the engine renders again")

    media = asyncio.run(pull(server.url, 0.5, during=hang_then_return))
    assert marks["degraded"]["reason"].startswith("no frame rendered in time for 1.0 s"), marks["degraded"]
    fps, gap_s = arrival_rate(media, marks["hang"] + 0.5, marks["return"])
    assert fps > 15 and gap_s < 1.0, (fps, gap_s)  # the viewer got the idle loop meanwhile
    told = [e["message"] for e in events(server, since) if e["session"] == "default"]
    assert any(m.startswith("degraded: no frame rendered in time") for m in told), told
    assert any(m.startswith("recovered: rendering again") for m in told), told
    measured("engine_stall", viewer_fps_while_stalled=fps, longest_gap_s=gap_s,
             flagged_after_s=marks["flagged"] - marks["hang"])


def test_the_dashboard_flags_a_degraded_session(flaky: tuple[ServerProcess, Path]) -> None:
    from playwright.sync_api import sync_playwright

    server, control = flaky
    # Playwright's sync API runs an event loop in this thread while it lives: it ends with this test, so the
    # asyncio.run of the tests after it still works.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(f"{server.url}/dashboard#token={server.token}")
            page.wait_for_selector("#app", state="visible")
            page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=20_000)
            # Healthy first (a browser starting on a small machine can make renders late for a moment).
            page.wait_for_selector("#h-degraded", state="hidden", timeout=30_000)
            control.touch()
            page.wait_for_selector("#h-degraded", state="visible", timeout=10_000)
            page.wait_for_function("[...document.querySelectorAll('#warnings li')].some(li => "
                                   "li.textContent.includes('degraded since') && "
                                   "li.textContent.includes('InjectedEngineFault'))")
            page.wait_for_function("[...document.querySelectorAll('#events li.warning')].some(li => "
                                   "li.textContent.includes('degraded: the engine failed'))")
            assert page.is_visible("#h-degraded")  # the badge an operator sees, with the reason in the warnings
            keep_screenshot(page, "dashboard-degraded.png")
            control.unlink()
            page.wait_for_selector("#h-degraded", state="hidden", timeout=10_000)
            assert not page.is_visible("#h-degraded")
            page.wait_for_function("[...document.querySelectorAll('#events li')].some(li => "
                                   "li.textContent.includes('recovered: rendering again'))")
            page.close()
        finally:
            control.unlink(missing_ok=True)
            browser.close()


# --- text to speech fails ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def no_espeak(pack: Path, artifact: Path, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[tuple[ServerProcess, Path]]:
    """A server whose PATH is one empty folder (espeak-ng is missing until the test links it in), with a speech
    queue of 60 s."""
    path = tmp_path_factory.mktemp("path")
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env={"PATH": str(path), "TWINCAST_SERVE_MAX_QUEUED_SPEECH_S": "60"}) as process:
        yield process, path


def test_missing_text_to_speech_answers_503_and_the_stream_goes_on(no_espeak: tuple[ServerProcess, Path]) -> None:
    server, path = no_espeak
    told = [e for e in events(server) if e["level"] == "error"]
    assert any("text to speech is not working" in e["message"] for e in told), told  # said at start already
    since = time.time()
    status, body = server.post("/api/say", {"text": "Nobody will hear this."})
    assert status == 503 and body["type"] == "DependencyError" and "espeak-ng is not installed" in body["error"]
    failed = wait_until(lambda: [e for e in events(server, since) if e["level"] == "error"], 5, "an error event")
    assert failed[0]["kind"] == "speech" and "text to speech failed: espeak-ng is not installed" in failed[0]["message"]

    media = asyncio.run(pull(server.url, 1.5))  # the twin streams on, silent
    assert len(media.video) >= 30 and session_stats(server)["degraded"] is None

    (path / "espeak-ng").symlink_to(ESPEAK)  # installed while serving: the next say works, no restart
    status, body = server.post("/api/say", {"text": "Now I can speak."})
    assert status == 202 and body["queued_s"] > 0.5
    server.post("/api/interrupt", {})


def test_a_later_sentence_that_fails_is_reported(no_espeak: tuple[ServerProcess, Path]) -> None:
    server, path = no_espeak
    link = path / "espeak-ng"
    if not link.exists():
        link.symlink_to(ESPEAK)
    since = time.time()
    sentences = [f"Sentence {n}." for n in range(1, 41)]  # about 40 s: it fits in the queue
    status, body = server.post("/api/say", {"text": " ".join(sentences)})
    link.unlink()  # espeak-ng goes away while the background task is still synthesising the rest
    assert status == 202 and body["sentences"] == 40
    failed = wait_until(lambda: [e for e in events(server, since) if e["level"] == "error"], 10,
                        "an error event for the sentence that failed")
    message = failed[0]["message"]
    assert "text to speech failed at sentence" in message and "of 40" in message, message
    assert ("espeak-ng is not installed" in message or "espeak-ng could not be run" in message), message
    assert "the rest dropped" in message
    spoken = int(message.split("(")[1].split(" queued")[0])
    assert 1 <= spoken < 40  # what was synthesised before it plays; the rest is dropped
    stats = session_stats(server)
    assert stats["speaking"] and stats["queue"]["speech_frames"] > 0
    server.post("/api/interrupt", {})
    assert session_stats(server)["fps"] > 15


def test_a_later_sentence_over_the_speech_queue_is_reported(no_espeak: tuple[ServerProcess, Path]) -> None:
    server, path = no_espeak
    link = path / "espeak-ng"
    if not link.exists():
        link.symlink_to(ESPEAK)
    since = time.time()
    sentences = [f"This is sentence number {n} of a long product script about a jacket." for n in range(1, 31)]
    status, body = server.post("/api/say", {"text": " ".join(sentences)})  # about 100 s, the queue holds 60
    assert status == 202
    failed = wait_until(lambda: [e for e in events(server, since) if e["level"] == "error"], 20,
                        "an error event for the sentence that did not fit")
    message = failed[0]["message"]
    assert "of 30 does not fit in the speech queue" in message and "the rest dropped" in message, message
    assert 50 < session_stats(server)["queue"]["speech_frames"] / 25 <= 60  # what fitted plays
    server.post("/api/interrupt", {})


def test_a_voice_espeak_rejects_answers_502(pack: Path, artifact: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "still",
                       env={"TWINCAST_SERVE_VOICE": "zz-no-such-voice"}) as server:
        status, body = server.post("/api/say", {"text": "Hello there."})
        assert status == 502 and body["type"] == "ToolError", body
        assert "espeak-ng failed" in body["error"] and "'zz-no-such-voice'" in body["error"]
        assert "voice does not exist" in body["error"]
        told = [e["message"] for e in events(server) if e["level"] == "error"]
        assert any(m.startswith("text to speech is not working") for m in told), told
        assert any(m.startswith("text to speech failed: espeak-ng failed") for m in told), told
        status, _ = post_bytes(server, "/api/play", tone_wav(), "audio/wav")  # other audio still plays
        assert status == 202
        wait_until(lambda: session_stats(server)["speaking"], 5, "the uploaded audio plays")


# --- SIGTERM -----------------------------------------------------------------------------------------------------

async def _watch_until_sigterm(server: ServerProcess, record_as: str) -> dict[str, Any]:
    """Watch the stream (a WHEP viewer), keep a dashboard and an agent push socket open, record for ~3 s, then
    send SIGTERM; return when the peer has closed, with what each client saw and when (monotonic)."""
    seen: dict[str, Any] = {"frames": 0}
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ended = asyncio.Event()
    drains: list[asyncio.Task[None]] = []

    @peer.on("track")
    def on_track(track: MediaStreamTrack) -> None:
        async def drain() -> None:
            try:
                while True:
                    await track.recv()
                    seen["frames"] += track.kind == "video"
            except MediaStreamError:
                seen.setdefault("track_ended", time.monotonic())
                ended.set()

        drains.append(asyncio.ensure_future(drain()))

    @peer.on("connectionstatechange")
    def on_state() -> None:
        if peer.connectionState == "closed":
            seen.setdefault("peer_closed", time.monotonic())

    peer.addTransceiver("video", direction="recvonly")
    peer.addTransceiver("audio", direction="recvonly")
    await peer.setLocalDescription(await peer.createOffer())
    async with aiohttp.ClientSession() as client:
        async with client.post(server.url + "/whep", data=peer.localDescription.sdp,
                               headers={"Content-Type": "application/sdp"}) as response:
            assert response.status == 201
            answer = await response.text()
        await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        dashboard = await client.ws_connect(server.url + "/api/events", headers=server.auth)
        agent = await client.ws_connect(server.url + "/api/push", headers=server.auth)
        loop = asyncio.get_running_loop()
        status, output = await loop.run_in_executor(None, server.post, "/api/outputs",
                                                    {"kind": "record", "path": record_as})
        assert status == 201, output
        seen["recordings"] = await loop.run_in_executor(None, recordings_dir, server)
        seen["recording_from"] = time.monotonic()
        await asyncio.sleep(3.0)
        seen["frames_before"] = seen["frames"]
        assert server.process is not None
        seen["sigterm"] = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(ended.wait(), timeout=20)
        for name, socket in (("dashboard", dashboard), ("agent", agent)):
            message = await asyncio.wait_for(_last_message(socket), timeout=20)
            seen[name] = (message.type, message.data, message.extra, time.monotonic())
    exit_code = await loop.run_in_executor(None, server.process.wait, 20)
    seen["exit"] = (exit_code, time.monotonic())
    await peer.close()
    await asyncio.gather(*drains)
    return seen


async def _last_message(socket: aiohttp.ClientWebSocketResponse) -> aiohttp.WSMessage:
    """Read a socket until it closes; the closing message."""
    while True:
        message = await socket.receive()
        if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
            return message


def test_sigterm_closes_viewers_finishes_the_recording_and_exits_0(pack: Path, artifact: Path,
                                                                    tmp_path: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0",
                       "--pose", "still", cwd=tmp_path) as server:
        seen = asyncio.run(_watch_until_sigterm(server, "show.mp4"))
    sigterm = seen["sigterm"]
    assert seen["frames_before"] >= 50  # it was streaming
    # The viewer is told at once (the server's DTLS close), not after ICE consent runs out ~30 s later.
    assert seen["track_ended"] - sigterm < 3.0, seen
    # The dashboard and the agent get a 1001 "going away" close, as promptly.
    for name in ("dashboard", "agent"):
        kind, code, reason, at = seen[name]
        assert kind == aiohttp.WSMsgType.CLOSE and code == 1001 and at - sigterm < 3.0, (name, seen[name])
        assert reason == "server shutting down"
    exit_code, exited_at = seen["exit"]
    assert exit_code == 0 and exited_at - sigterm < 10.0, (seen, server.lines[-20:])
    # The recording is finished, renamed into place, playable, and as long as it was recording.
    recordings: Path = seen["recordings"]
    assert [p.name for p in recordings.iterdir()] == ["show.mp4"]  # no .recording-* left behind
    probe = ffprobe(str(recordings / "show.mp4"))
    assert probe["video"]["codec_name"] == "h264" and probe["audio"]["codec_name"] == "aac"
    recorded_s = sigterm - seen["recording_from"]
    assert abs(float(probe["format"]["duration"]) - recorded_s) < 1.0, (probe["format"], recorded_s)
    assert any("shut down" in line for line in server.lines), server.lines[-10:]
    measured("sigterm", viewer_closed_after_s=seen["track_ended"] - sigterm,
             sockets_closed_after_s=max(seen[name][3] for name in ("dashboard", "agent")) - sigterm,
             exited_after_s=exited_at - sigterm, recorded_s=recorded_s,
             file_duration_s=float(probe["format"]["duration"]))


# --- a recording's disk fills up -------------------------------------------------------------------------------

SMALL_DISK_BYTES = 2_000_000  # about 10 s of recording


@pytest.fixture(params=["tmpfs", "file_size_limit"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, list[str], str]]:
    """Where a recording runs out of room after ~2 MB, two ways: (the server's working directory, the command
    that starts it, the reason the recording must give).

    ``tmpfs``: a 2 MB tmpfs mounted there, a real full disk (ENOSPC); it needs root, which the CI machines have,
    and is skipped elsewhere. ``file_size_limit``: RLIMIT_FSIZE on the server process (``prlimit``), so each file
    it writes stops at 2 MB with EFBIG (Python ignores SIGXFSZ); it runs anywhere, and the RTMP ingest, another
    process, is not limited.
    """
    directory = tmp_path / "small-disk"
    directory.mkdir()
    if request.param == "tmpfs":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK_BYTES}", "tmpfs", str(directory)],
                                 capture_output=True, text=True, check=False)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}); the file_size_limit case runs")
        try:
            yield directory, [TWINCAST], "disk full: no space left on device"
        finally:
            subprocess.run(["umount", str(directory)], check=False)
    else:
        yield directory, ["prlimit", f"--fsize={SMALL_DISK_BYTES}", "--", TWINCAST], "file too large: "


def output_state(server: ServerProcess, output_id: str) -> dict[str, Any]:
    """One output as ``GET /api/outputs`` lists it."""
    return next(o for o in server.get("/api/outputs")[1]["outputs"] if o["id"] == output_id)


def test_a_full_disk_stops_the_recording_clearly_and_the_show_goes_on(
        small_disk: tuple[Path, list[str], str], pack: Path, artifact: Path, tmp_path: Path) -> None:
    directory, command, reason = small_disk
    with RtmpIngest(tmp_path / "nginx") as ingest, \
            ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0", "--pose", "loop",
                          command=command, cwd=directory) as server:  # the moving loop fills 2 MB in ~10 s
        status, push = server.post("/api/outputs", {"kind": "rtmp", "url": ingest.url("other-output-1234")})
        assert status == 201
        status, recording = server.post("/api/outputs", {"kind": "record", "path": "show.mp4"})
        assert status == 201
        root = recordings_dir(server)
        marks: dict[str, Any] = {}

        async def until_it_fails() -> None:
            loop = asyncio.get_running_loop()
            marks["failed"] = await loop.run_in_executor(None, wait_until, lambda: (
                (row := output_state(server, recording["id"]))["state"] == "failed" and row), 60,
                "the recording fails when the disk is full")
            marks["at"] = time.monotonic()
            marks["push_then"] = await loop.run_in_executor(None, output_state, server, push["id"])
            await asyncio.sleep(2.0)
            marks["push_later"] = await loop.run_in_executor(None, output_state, server, push["id"])

        media = asyncio.run(pull(server.url, 0.5, during=until_it_fails))
        told = [e for e in events(server) if e["kind"] == "output" and "failed" in e["message"]]

    # The recording stopped and said why, in its state and in the event log.
    failed = marks["failed"]
    assert failed["error"].startswith(reason) and "is kept, playable, in" in failed["error"], failed
    assert len(told) == 1 and told[0]["level"] == "error" and reason in told[0]["message"], told
    # Nothing is left half-written, nor under the finished recording's name: what was recorded is cut back to
    # its whole fragments, kept beside it as show.partial.mp4, and plays.
    names = sorted(p.name for p in root.iterdir())
    assert names == ["show.partial.mp4"], names
    probe = ffprobe(str(root / "show.partial.mp4"))
    assert probe["video"]["codec_name"] == "h264" and float(probe["format"]["duration"]) > 2.0, probe
    decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(root / "show.partial.mp4"), "-f", "null", "-"],
                             capture_output=True, text=True, check=False)
    assert decoded.returncode == 0 and not decoded.stderr.strip(), decoded.stderr  # no torn packet at its end
    # The viewer never noticed, and the other output kept going.
    fps, gap_s = arrival_rate(media, marks["at"] - 2.0, marks["at"] + 2.0)
    assert fps > 15 and gap_s < 1.0, (fps, gap_s)
    then, later = marks["push_then"], marks["push_later"]
    assert then["state"] == later["state"] == "live" and later["reconnects"] == 0
    assert later["video_frames"] - then["video_frames"] >= 25, (then, later)
    measured(f"full_disk_{reason.split(':')[0].replace(' ', '_')}", error=failed["error"],
             kept_s=float(probe["format"]["duration"]), viewer_fps_around_failure=fps, longest_gap_s=gap_s,
             other_output_frames_in_2_s=later["video_frames"] - then["video_frames"])
