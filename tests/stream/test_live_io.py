"""Every input, driver and output of the live core, against real servers and real peers on loopback."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from avatar.landmarks import FaceLandmarker
from avatar.pack import AvatarPack
from avatar.pose import head_pose
from avatar.speech import synthesize
from avatar.synth import DEFAULT_PORTRAIT, load_portrait
from avatar.video_io import VideoWriter
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import AUTH, ServerProcess, measured, mouth_and_upper_change, run_cli, wait_until
from tests.stream.rtmp_ingest import RtmpIngest, ffprobe

PUSH_TEXT = "An agent pushes this speech as raw samples over a web socket."


def speech_pcm(text: str) -> tuple[bytes, int]:
    speech = synthesize(text)
    return (np.clip(speech.samples, -1, 1) * 32767).astype("<i2").tobytes(), speech.sample_rate_hz


def wav_bytes(text: str) -> bytes:
    pcm, rate = speech_pcm(text)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm)
    return buffer.getvalue()


def assert_mouth_moved(media: ReceivedMedia, started_at: float, speech_s: float, pack: Path) -> None:
    arrival = np.array(media.video_arrival_s) - started_at
    frames = np.stack(media.video).astype(np.float32)
    speaking = frames[(arrival > 0.5) & (arrival < speech_s)]
    idle_after = frames[arrival > speech_s + 1.0]
    assert len(speaking) >= 15 and len(idle_after) >= 10, (len(speaking), len(idle_after))
    mouth, upper = mouth_and_upper_change(speaking, idle_after.mean(axis=0), pack)
    assert np.percentile(mouth, 90) > 3.0, mouth
    assert np.percentile(mouth, 90) > 4 * np.percentile(upper, 90), (mouth, upper)


def test_websocket_push_moves_the_mouth(server: ServerProcess, pack: Path) -> None:
    pcm, rate = speech_pcm(PUSH_TEXT)
    seconds = len(pcm) / 2 / rate
    marks: dict[str, Any] = {}

    async def push() -> None:
        await asyncio.sleep(1.0)
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(server.url + "/api/push", headers=AUTH) as socket:
            assert (await socket.receive_json())["type"] == "ready"
            await socket.send_json({"type": "start", "sample_rate": rate})
            assert (await socket.receive_json())["type"] == "started"
            marks["at"] = time.monotonic()
            packet = 2 * rate // 25  # 40 ms packets, sent faster than real time: they queue
            for start in range(0, len(pcm), packet):
                await socket.send_bytes(pcm[start:start + packet])
            await socket.send_json({"type": "end"})
            marks["queued"] = await socket.receive_json()
            await socket.send_bytes(b"\x01\x02\x03")  # a torn packet: named, dropped, the stream goes on
            marks["odd"] = await socket.receive_json()
            await socket.send_str('{"type": "sing"}')
            marks["unknown"] = await socket.receive_json()
            await socket.send_json({"type": "start", "sample_rate": 3})
            marks["rate"] = await socket.receive_json()

    media = asyncio.run(pull(server.url, 7.0, during=push))
    assert marks["queued"] == {"type": "queued", "seconds": pytest.approx(seconds, abs=0.1)}
    assert marks["odd"]["type"] == "error" and "16-bit" in marks["odd"]["error"]
    assert marks["unknown"]["type"] == "error" and "unknown message type 'sing'" in marks["unknown"]["error"]
    assert marks["rate"]["type"] == "error" and "sample_rate 3" in marks["rate"]["error"]
    assert_mouth_moved(media, marks["at"], seconds, pack)


def test_push_interrupt_silences_and_ignores_the_cut_off_tail(server: ServerProcess) -> None:
    pcm, rate = speech_pcm("This pushed speech is cut off by the agent itself half way through the sentence.")

    async def scenario() -> list[dict[str, Any]]:
        replies = []
        async with aiohttp.ClientSession() as client, \
                client.ws_connect(server.url + "/api/push", headers=AUTH) as socket:
            await socket.receive_json()
            await socket.send_json({"type": "start", "sample_rate": rate})
            await socket.receive_json()
            await socket.send_bytes(pcm)
            await asyncio.sleep(0.8)
            await socket.send_json({"type": "interrupt"})
            replies.append(await socket.receive_json())
            await socket.send_bytes(pcm)  # in flight from the old utterance: ignored until the next start
            await socket.send_json({"type": "end"})
            replies.append(await socket.receive_json())
        return replies

    interrupted, ended = asyncio.run(scenario())
    assert interrupted["type"] == "interrupted" and interrupted["dropped_s"] > 1.0
    assert ended == {"type": "queued", "seconds": 0.0}
    stats = wait_until(lambda: (s := server.get("/api/stats")[1])["speaking"] is False and s, 2, what="silent")
    assert stats["queue"]["speech_frames"] == 0


def test_audio_file_plays_as_a_queue(server: ServerProcess) -> None:
    clip = wav_bytes("First file.")
    status, first = _post_bytes(server.url + "/api/play", clip, "audio/wav")
    assert status == 202 and first["queued_s"] > 0.5
    second_status, second = _post_bytes(server.url + "/api/play", clip, "audio/wav")
    assert second_status == 202 and second["queue_s"] > first["queued_s"]  # appended after the first
    bad_status, bad = _post_bytes(server.url + "/api/play", b"definitely not audio", "audio/wav")
    assert bad_status == 422 and "not decodable audio" in bad["error"]
    server.post("/api/interrupt", {})


def _post_bytes(url: str, payload: bytes, content_type: str) -> tuple[int, Any]:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=payload, method="POST", headers={"Content-Type": content_type, **AUTH})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --- several twins, webcam and microphone upstreams ------------------------------------------------------------

@pytest.fixture(scope="module")
def swaying_pack(workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second twin: a 192² clip whose head rolls about ±7°, enrolled at the tiny model's crop."""
    root = tmp_path_factory.mktemp("sway")
    settings = root / "twincast.toml"
    settings.write_text("[synth]\nhead_sway_deg = 7.0\nseed = 3\n")
    clip = root / "sway.mp4"
    run_cli("synth-footage", "--config-file", str(settings), "--text", "I turn my head while I talk to you. "
            "Then I turn it the other way.", "--out", str(clip), "--size", "192", "-q")
    out = root / "pack"
    run_cli("enroll", str(clip), "--out", str(out), "--crop-px", "64", "-q")
    return out


@pytest.fixture(scope="module")
def twins(pack: Path, swaying_pack: Path, artifact: Path) -> Iterator[ServerProcess]:
    with ServerProcess("serve", "--twin", f"astro={pack},{artifact}", "--twin", f"sway={swaying_pack},{artifact}",
                       "--port", "0") as process:
        yield process


def test_two_twins_stream_at_once_batched_by_one_worker(twins: ServerProcess) -> None:
    async def both() -> tuple[ReceivedMedia, ReceivedMedia]:
        first = pull(twins.url, 2.5, session="astro")
        second = pull(twins.url, 2.5, session="sway")
        return await asyncio.gather(first, second)  # type: ignore[return-value]

    astro, sway = asyncio.run(both())
    assert len(astro.video) >= 50 and len(sway.video) >= 50
    assert astro.video[0].shape == (256, 256, 3) and sway.video[0].shape == (192, 192, 3)
    stats = twins.get("/api/stats")[1]
    assert set(stats["sessions"]) == {"astro", "sway"}
    assert all(row["fps"] > 12 for row in stats["sessions"].values())  # both keep up (speed: bench/)
    assert len(stats["engines"]) == 1  # both twins share the artifact, so one engine ...
    assert stats["render_worker"]["mean_batch"] > 1.3  # ... and their frames share engine calls


def test_sessions_api_adds_and_removes_a_session(twins: ServerProcess) -> None:
    status, created = twins.post("/api/sessions", {"id": "second-astro", "twin": "astro"})
    assert status == 201 and created == {"id": "second-astro", "twin": "astro"}
    assert twins.post("/api/sessions", {"id": "second-astro", "twin": "astro"})[0] == 400
    assert twins.post("/api/sessions", {"id": "x", "twin": "nobody"})[0] == 404
    viewers_before = twins.get("/api/stats")[1]["viewers"]
    watched: dict[str, Any] = {}

    async def remove_while_watched() -> None:
        loop = asyncio.get_running_loop()
        watched["during"] = (await loop.run_in_executor(None, twins.get, "/api/stats"))[1]["sessions"]["second-astro"]
        watched["removed"] = (await loop.run_in_executor(None, twins.delete, "/api/sessions/second-astro"))[0]
        watched["after"] = (await loop.run_in_executor(None, twins.get, "/api/stats"))[1]

    media = asyncio.run(pull(twins.url, 1.0, session="second-astro", during=remove_while_watched))
    assert watched["during"]["viewers"] == 1 and watched["removed"] == 204
    assert 1 <= len(media.video) < 10  # the session went, and its viewer's stream with it, in the 1 s that followed
    assert "second-astro" not in watched["after"]["sessions"] and watched["after"]["viewers"] == viewers_before
    assert "second-astro" not in twins.get("/api/sessions")[1]["sessions"]
    told = [(e["kind"], e["message"]) for e in twins.get("/api/log")[1]["events"] if e["session"] == "second-astro"]
    assert told[-2:] == [("viewer", "0 viewer(s)"), ("session", "session stopped")]


def _rotated_portrait_clip(path: Path, roll_deg: float, seconds: float = 4.0) -> tuple[Path, float]:
    """A still clip of the portrait rotated by ``roll_deg`` (counter-clockwise), and its measured head roll."""
    portrait = load_portrait(DEFAULT_PORTRAIT)[0:400, 60:460]
    centre = (portrait.shape[1] / 2, portrait.shape[0] / 3)
    matrix = cv2.getRotationMatrix2D(centre, roll_deg, 1.0)
    frame = cv2.resize(cv2.warpAffine(portrait, matrix, portrait.shape[1::-1], borderMode=cv2.BORDER_REFLECT101),
                       (256, 256))
    with VideoWriter(path, width=256, height=256, fps=25, audio_rate_hz=None) as writer:
        for _ in range(int(seconds * 25)):
            writer.write(frame)
    with FaceLandmarker(video=False) as landmarker:
        points = landmarker.detect(frame)
    assert points is not None
    return path, head_pose(points, (256, 256))[2]


async def _send_upstream(url: str, kind: str, player: MediaPlayer, seconds: float,
                         until: Any = None) -> Any:
    """Send a player's track upstream for ``seconds``, or, given ``until`` (blocking, polled), until it returns
    something truthy (at most 20 s); returns its last value."""
    peer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    peer.addTrack(player.video if kind == "webcam" else player.audio)
    await peer.setLocalDescription(await peer.createOffer())
    async with aiohttp.ClientSession() as client:
        async with client.post(f"{url}/api/{kind}?session=sway", data=peer.localDescription.sdp,
                               headers={"Content-Type": "application/sdp", **AUTH}) as response:
            assert response.status == 201, await response.text()
            answer = await response.text()
            location = response.headers["Location"]
        await peer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await asyncio.sleep(seconds)
        seen = None
        deadline = time.monotonic() + 20
        while until is not None and time.monotonic() < deadline:
            seen = await asyncio.get_running_loop().run_in_executor(None, until)
            if seen:
                break
            await asyncio.sleep(0.2)
        async with client.delete(url + location, headers=AUTH) as response:
            assert response.status == 204
    await peer.close()
    return seen


def _base_rolls(pack: Path) -> np.ndarray:
    loaded = AvatarPack.load(pack)
    start, end = loaded.meta.base_range
    size = (loaded.meta.frame_width, loaded.meta.frame_height)
    return np.array([head_pose(points, size)[2] for points in np.asarray(loaded.array("landmarks")[start:end])])


def test_webcam_upstream_turns_the_twins_head(twins: ServerProcess, swaying_pack: Path, tmp_path: Path) -> None:
    rolls = _base_rolls(swaying_pack)
    assert np.ptp(rolls) > 8  # the twin's loop covers both directions
    chosen, measured = {}, {}
    for sign in (-1, 1):
        clip, measured[sign] = _rotated_portrait_clip(tmp_path / f"roll{sign}.mp4", roll_deg=7.0 * sign)
        with_clip = MediaPlayer(str(clip), loop=True)

        def measured_enough() -> dict[str, Any] | None:
            session = twins.get("/api/stats")[1]["sessions"]["sway"]
            upstreams = session["upstreams"]
            return session if upstreams and upstreams[0]["measured"] >= 10 else None

        session = asyncio.run(_send_upstream(twins.url, "webcam", with_clip, 1.0, until=measured_enough))
        assert session, (twins.get("/api/stats")[1]["sessions"]["sway"]["upstreams"], twins.lines[-30:])
        pose = session["pose"]
        chosen[sign] = (pose["mode"], rolls[pose["base_index"]])
    assert chosen[-1][0] == chosen[1][0] == "webcam"
    assert abs(measured[1] - measured[-1]) > 10  # the operator tilts their head one way, then the other ...
    for sign in (-1, 1):  # ... and each time the twin shows the base frame nearest that tilt
        nearest = rolls[np.argmin(np.abs(rolls - measured[sign]))]
        assert abs(chosen[sign][1] - nearest) < 2.0, (chosen, measured)
    assert abs(chosen[1][1] - chosen[-1][1]) > 5, chosen
    # the webcam is gone: back to the footage loop by itself, a second later
    pose = wait_until(lambda: (p := twins.get("/api/stats")[1]["sessions"]["sway"]["pose"])["mode"] == "loop" and p,
                      5, what="back to the loop")
    assert pose["webcam_fallbacks"] >= 1


def test_scripted_pose_over_the_api(twins: ServerProcess, swaying_pack: Path) -> None:
    rolls = _base_rolls(swaying_pack)
    status, left = twins.post("/api/pose", {"session": "sway", "roll": float(rolls.min())})
    assert status == 200 and left["mode"] == "script"
    def base_index() -> int:
        return int(twins.get("/api/stats")[1]["sessions"]["sway"]["pose"]["base_index"])

    third = float(np.ptp(rolls)) / 3

    def shows_roll(side: int) -> int:  # the base frame on screen (+1), once its roll is in that side's third
        index = base_index()
        near = rolls[index] <= rolls.min() + third if side < 0 else rolls[index] >= rolls.max() - third
        return index + 1 if near else 0

    left_index = wait_until(lambda: shows_roll(-1), 5, what="a left-tilted base frame") - 1
    twins.post("/api/pose", {"session": "sway", "roll": float(rolls.max())})
    right_index = wait_until(lambda: shows_roll(1), 5, what="a right-tilted base frame") - 1
    assert rolls[right_index] - rolls[left_index] > 5
    assert twins.post("/api/pose", {"session": "sway", "mode": "loop"})[1]["mode"] == "loop"
    assert twins.post("/api/pose", {"session": "sway", "roll": "left"})[0] == 400


def test_microphone_upstream_speaks_through_the_twin(twins: ServerProcess, tmp_path: Path) -> None:
    recording = tmp_path / "voice.wav"
    recording.write_bytes(wav_bytes("This is my own voice, coming in from the microphone, live."))
    samples: list[bool] = []

    async def talk_and_watch() -> None:
        async def watch() -> None:
            for _ in range(20):
                await asyncio.sleep(0.15)
                stats = await asyncio.get_running_loop().run_in_executor(None, lambda: twins.get("/api/stats")[1])
                samples.append(stats["sessions"]["sway"]["speaking"])

        await asyncio.gather(_send_upstream(twins.url, "mic", MediaPlayer(str(recording)), 3.0), watch())

    asyncio.run(talk_and_watch())
    assert any(samples)  # the operator's voice became the twin's speech
    assert twins.get("/api/stats")[1]["sessions"]["sway"]["upstreams"] == []  # hung up cleanly


# --- outputs ----------------------------------------------------------------------------------------------------

def test_rtmp_push_reaches_nginx_as_h264_aac_25fps_and_reconnects(server: ServerProcess, tmp_path: Path) -> None:
    ingest = RtmpIngest(tmp_path / "nginx").start()
    try:
        url = ingest.url("live-secret-key-1234")
        status, output = server.post("/api/outputs", {"kind": "rtmp", "url": url})
        assert status == 201
        assert "live-secret-key" not in output["target"] and output["target"].endswith("1234")
        _wait_for(lambda: _output(server, output["id"])["state"] == "live", 15)
        probe = ffprobe(url)
        assert probe["video"]["codec_name"] == "h264" and probe["video"]["r_frame_rate"] == "25/1"
        assert probe["audio"]["codec_name"] == "aac" and probe["audio"]["sample_rate"] == "48000"
        since = time.time()
        marks: dict[str, float] = {}

        async def outages() -> None:
            loop = asyncio.get_running_loop()
            marks["down"] = time.monotonic()
            await loop.run_in_executor(None, ingest.stop)  # the ingest goes away ...
            await loop.run_in_executor(None, _wait_for, lambda: _output(server, output["id"])["reconnects"] >= 3, 30)
            marks["up"], marks["up_wall"] = time.monotonic(), time.time()
            await loop.run_in_executor(None, ingest.start)  # ... and comes back: the output reconnects by itself
            await loop.run_in_executor(None, _wait_for, lambda: _output(server, output["id"])["state"] == "live", 40)
            marks["live_again"] = time.time()
            frames = _output(server, output["id"])["video_frames"]
            await loop.run_in_executor(None, _wait_for, lambda: _output(server, output["id"])["video_frames"] > frames
                                       + 6 * 25, 20)  # live for 6 s: it has recovered (STABLE_LIVE_S is 5 s) ...
            marks["second"] = time.time()  # ... so a second outage backs off from 1 s again
            await loop.run_in_executor(None, ingest.stop)
            await loop.run_in_executor(None, _wait_for, lambda: _output(server, output["id"])["reconnects"] >= 5, 30)

        media = asyncio.run(pull(server.url, 0.5, during=outages))  # a viewer watches all along
        arrival = np.array([t for t in media.video_arrival_s if marks["down"] <= t <= marks["up"]])
        fps, gap_s = (arrival.size - 1) / (arrival[-1] - arrival[0]), float(np.diff(arrival).max())
        assert fps > 15 and gap_s < 1.0, (fps, gap_s)  # the viewer is unaffected
        told = [(e["at"], e["level"], e["message"]) for e in server.get("/api/log")[1]["events"]
                if e["kind"] == "output" and e["at"] >= since]
        retries = [at for at, level, message in told if ": reconnecting (" in message and level == "warning"]
        assert len(retries) >= 5, told
        live = [at for at, level, message in told if message.endswith(": live") and level == "info"]
        assert len(live) == 1 and marks["live_again"] - 1 < live[0] < marks["second"], told  # live only when it is
        first, second = [at for at in retries if at < marks["second"]], [at for at in retries if at > marks["second"]]
        gaps = np.diff(first[:3])
        assert 0.7 < gaps[0] < 1.7 and 1.5 * gaps[0] < gaps[1] < 3.0, gaps  # backoff: 1 s, then 2 s, ...
        assert second[1] - second[0] < 1.7, second  # ... and from 1 s again after it was live
        measured("rtmp_outage", viewer_fps_during_outage=fps, longest_gap_s=gap_s, retry_gaps_s=gaps.round(2).tolist(),
                 live_after_ingest_back_s=live[0] - marks["up_wall"], second_outage_first_retry_s=second[1] - second[0])
        status, final = server.delete(f"/api/outputs/{output['id']}")
        assert status == 200 and final["state"] == "stopped" and final["video_frames"] > 25
        leaked = [line for line in server.lines if "live-secret-key" in line]
        assert not leaked, leaked  # never logged in full
    finally:
        ingest.stop()


def test_recording_to_mp4(server: ServerProcess) -> None:
    status, output = server.post("/api/outputs", {"kind": "record", "path": "shows/show.mp4"})
    target = Path(server.get("/api/outputs")[1]["recordings_dir"]) / "shows" / "show.mp4"  # inside the directory
    assert status == 201 and output["state"] in ("starting", "recording") and output["target"] == str(target)
    time.sleep(3.0)
    assert not target.exists()  # written to a temporary file until stopped
    status, final = server.delete(f"/api/outputs/{output['id']}")
    assert status == 200 and final["state"] == "stopped"
    probe = ffprobe(str(target))
    assert probe["video"]["codec_name"] == "h264" and probe["video"]["avg_frame_rate"] == "25/1"
    assert probe["audio"]["codec_name"] == "aac"
    assert 2.0 < float(probe["format"]["duration"]) < 4.5
    assert server.post("/api/outputs", {"kind": "record", "path": "shows/show.mp4"})[0] == 400  # not overwritten


def _output(server: ServerProcess, output_id: str) -> dict[str, Any]:
    return next(o for o in server.get("/api/outputs")[1]["outputs"] if o["id"] == output_id)


def _wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"condition not met within {timeout_s} s")
