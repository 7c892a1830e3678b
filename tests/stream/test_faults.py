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
import sys
import time
import urllib.error
import urllib.request
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from avatar.pack import AvatarPack
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import ServerProcess, crop_box
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


def session_stats(server: ServerProcess) -> dict[str, Any]:
    """The default session's figures."""
    stats = server.get("/api/stats")[1]
    return dict(stats["sessions"][stats["default_session"]])


def events(server: ServerProcess, since: float = 0.0) -> list[dict[str, Any]]:
    """Event-log entries at or after ``since`` (wall clock)."""
    return [event for event in server.get("/api/log")[1]["events"] if event["at"] >= since]


def arrival_rate(media: ReceivedMedia, start: float, end: float) -> tuple[float, float]:
    """Video frames per second that arrived in [start, end] (monotonic), and the longest gap between two."""
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
    assert fps > 20 and gap_s < 0.5, (fps, gap_s)

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
    warned = [i for i, (level, message) in enumerate(told) if level == "warning" and message.startswith("degraded: ")]
    recovered = [i for i, (_, message) in enumerate(told) if message.startswith("recovered: rendering again")]
    assert len(warned) == 1 and len(recovered) == 1 and warned[0] < recovered[0], told
    after = session_stats(server)
    assert after["degraded"] is None and after["fps"] > 20
    # One traceback in the server's log for the whole failure, not one per frame; and a line when it recovers.
    logged = server.lines[first_line:]
    assert sum("render batch of" in line for line in logged) == 1, logged
    assert any("renders again after" in line for line in logged), logged


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
            assert page.locator("#h-degraded").is_hidden()
            control.touch()
            page.wait_for_selector("#h-degraded", state="visible", timeout=10_000)
            page.wait_for_function("[...document.querySelectorAll('#warnings li')].some(li => "
                                   "li.textContent.includes('degraded since') && "
                                   "li.textContent.includes('InjectedEngineFault'))")
            page.wait_for_function("[...document.querySelectorAll('#events li.warning')].some(li => "
                                   "li.textContent.includes('degraded: the engine failed'))")
            keep_screenshot(page, "dashboard-degraded.png")
            control.unlink()
            page.wait_for_selector("#h-degraded", state="hidden", timeout=10_000)
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
    assert session_stats(server)["fps"] > 20


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
