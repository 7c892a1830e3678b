"""``twincast serve`` as a real process, watched by a real aiortc WHEP client over loopback."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from stream.whep_client import ReceivedMedia, pull
from tests.helpers import ServerProcess, http, mouth_and_upper_change, wait_until


def test_health_and_stats(server: ServerProcess) -> None:
    status, health = server.get("/healthz")
    assert status == 200 and health["status"] == "ok"
    status, stats = server.get("/api/stats")
    assert status == 200
    assert {"fps", "render_ms_p50", "viewers", "speaking", "generation"} <= set(stats)
    assert stats["engine"]["engine"] == "onnxruntime"  # auto picks ONNX Runtime on CPU
    # It keeps up: frames come at the clock's rate (a wide margin: speed itself is measured in bench/).
    fps = wait_until(lambda: (f := server.get("/api/stats")[1]["fps"]) >= 12 and f, 10, what="fps ≥ 12")
    assert fps <= 30  # and never faster than the 25-fps clock


def test_whep_viewer_receives_video_and_audio_and_the_mouth_speaks(server: ServerProcess, pack: Path) -> None:
    said: dict[str, object] = {}

    async def speak_after_a_second() -> None:
        await asyncio.sleep(1.2)
        said["at"] = time.monotonic()
        said["response"] = await asyncio.get_running_loop().run_in_executor(
            None, lambda: server.post("/api/say", {"text": "Look at my mouth move while I say these words."}))

    media: ReceivedMedia = asyncio.run(pull(server.url, 6.5, during=speak_after_a_second))
    status, body = said["response"]  # type: ignore[misc]
    assert status == 202 and 1.0 < body["queued_s"] < 4.0
    declared = server.get("/api/stats")[1]["frame_size"]
    assert len(media.video) >= 50  # ≥ 2 s at 25 fps
    assert media.video[0].shape == (declared[1], declared[0], 3) == (256, 256, 3)
    assert media.audio_rate_hz == 48_000 and media.audio_seconds >= 2.0

    # Compare frames while speaking with idle frames after the speech (the codec has settled by then).
    arrival = np.array(media.video_arrival_s) - said["at"]  # type: ignore[operator]
    frames = np.stack(media.video).astype(np.float32)
    speech_s = body["queued_s"]
    speaking = frames[(arrival > 0.5) & (arrival < speech_s)]
    idle_after = frames[arrival > speech_s + 1.0]
    assert len(speaking) >= 20 and len(idle_after) >= 10
    mouth_change, upper_change = mouth_and_upper_change(speaking, idle_after.mean(axis=0), pack)
    assert np.percentile(mouth_change, 90) > 3.0, mouth_change
    # The upper face stays put: what changes there is only the codec's rate control reacting to the mouth.
    assert np.percentile(mouth_change, 90) > 4 * np.percentile(upper_change, 90), (mouth_change, upper_change)
    received = media.audio.astype(np.float32)
    speech_audio = received[int(48_000 * 1.6):int(48_000 * (1.2 + speech_s))]
    assert np.sqrt(np.mean(speech_audio**2)) > 300  # the speech is audible at the client


def test_speech_starts_after_the_first_sentence(server: ServerProcess) -> None:
    status, body = server.post("/api/say", {"text": "Short start. Then a much longer second sentence follows it. "
                                                     "And a third one comes after that, to finish the thought."})
    assert status == 202 and body["sentences"] == 3
    assert body["queued_s"] < 1.5  # only the first sentence was synthesised before the answer
    # the rest arrives in the background while the first plays
    wait_until(lambda: server.get("/api/stats")[1]["queue"]["speech_frames"] / 25 > 3.0, 10, what="3 s queued")
    server.post("/api/interrupt", {})


def test_interrupt_silences_and_bumps_generation(server: ServerProcess) -> None:
    status, _ = server.post("/api/say", {"text": "This sentence is long enough to be interrupted half way through."})
    assert status == 202
    wait_until(lambda: server.get("/api/stats")[1]["speaking"], 5, what="speaking")
    status, body = server.post("/api/interrupt", {})
    assert status == 200 and body["dropped_s"] > 0.5
    stats = wait_until(lambda: (s := server.get("/api/stats")[1])["speaking"] is False and s, 2, what="silent")
    assert stats["generation"] == body["generation"]


@pytest.mark.parametrize(("method", "path", "body", "content_type", "status", "message"), [
    ("POST", "/api/say", {"text": "   "}, "application/json", 422, "text is empty"),
    ("POST", "/api/say", "{not json", "application/json", 400, "not valid JSON"),
    ("POST", "/api/say", {"words": "hi"}, "application/json", 400, 'needs "text"'),
    ("POST", "/api/say", "text=hi", "text/plain", 400, "application/json"),
    ("POST", "/whep", "v=0", "text/plain", 400, "application/sdp"),
    ("POST", "/whep", "v=0\r\n", "application/sdp", 400, "no video section"),
    ("DELETE", "/whep/unknown", None, "application/json", 404, "no WHEP viewer"),
    ("GET", "/nowhere", None, "application/json", 404, "Not Found"),
])
def test_bad_requests_get_json_errors(server: ServerProcess, method: str, path: str, body: object,
                                      content_type: str, status: int, message: str) -> None:
    code, payload = http(method, server.url + path, body, content_type=content_type, headers=server.auth)
    assert code == status
    assert isinstance(payload, dict) and message in payload["error"]


def test_oversized_body_is_refused(server: ServerProcess) -> None:
    code, payload = server.post("/api/say", {"text": "x" * 100_000})
    assert code == 413 and "error" in payload


def test_operator_token_guards_speech(pack: Path, artifact: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0",
                       env={"TWINCAST_OPERATOR_TOKEN": "s3cret-token"}) as guarded:
        assert guarded.post("/api/say", {"text": "hello"}, headers={})[0] == 401
        wrong = guarded.post("/api/say", {"text": "hello"}, headers={"Authorization": "Bearer nope"})
        assert wrong[0] == 401 and "bearer token" in wrong[1]["error"]
        ok = guarded.post("/api/say", {"text": "hello"}, headers={"Authorization": "Bearer s3cret-token"})
        assert ok[0] == 202
        assert guarded.get("/healthz")[0] == 200  # viewer endpoints stay public
        assert not any("s3cret-token" in line for line in guarded.lines)  # the secret is never logged


def test_a_token_is_generated_and_shown_once_when_none_is_set(pack: Path, artifact: Path) -> None:
    import os
    import re

    env = {key: value for key, value in os.environ.items() if key != "TWINCAST_OPERATOR_TOKEN"}
    process = ServerProcess("serve", "--avatar", str(pack), "--model", str(artifact), "--port", "0")
    process.env = env
    with process as served:
        shown = [line for line in served.lines if "#token=" in line]
        assert len(shown) == 1
        token = re.search(r"#token=(\S+)", shown[0]).group(1)  # type: ignore[union-attr]
        assert served.get("/api/stats", headers={})[0] == 401
        assert served.get("/api/stats", headers={"Authorization": f"Bearer {token}"})[0] == 200
