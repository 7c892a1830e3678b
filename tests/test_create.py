"""``twincast create``: a new person's video to a live twin in one command, resumable, and refusing unusable footage
or a budget too short before anything is built (integration tier: the real CLI, tiny size, seconds of training)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import numpy as np

from avatar.audio import PLAYBACK_RATE_HZ, PLAYBACK_SAMPLES_PER_FRAME
from avatar.video_io import VideoWriter
from stream.whep_client import pull
from tests.helpers import TWINCAST, ServerProcess, run_cli, wait_until

TINY_BUDGET = "45s"


def test_a_video_becomes_a_live_twin_in_one_command_even_after_a_ctrl_c(new_person_clip: Path,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "twins" / "hopper"
    # Started, then interrupted (SIGINT, as Ctrl-C) once it is training the teacher.
    log = tmp_path / "first.log"
    with log.open("w") as errors:
        first = subprocess.Popen([TWINCAST, "create", str(new_person_clip), "--name", "hopper", "--size", "tiny",
                                  "--budget", TINY_BUDGET, "--out", str(out), "--json"], stdout=subprocess.PIPE,
                                 stderr=errors, text=True)
    events = []
    assert first.stdout is not None
    for line in first.stdout:
        events.append(json.loads(line))
        if events[-1]["type"] == "progress" and events[-1]["stage"] == "teacher" and events[-1].get("step", 0) > 20:
            first.send_signal(signal.SIGINT)
            break
    assert first.wait(timeout=60) == 130, log.read_text()[-3000:]
    plan = next(event for event in events if event["type"] == "plan")
    assert [stage["name"] for stage in plan["plan"]["stages"]] == ["enroll", "teacher", "eval", "export"]
    assert "estimated" in plan["text"] and "budget" in plan["text"]  # the plan and its time, said first
    state = json.loads((out / "create.json").read_text())
    assert state["state"] == "interrupted" and state["stages"]["enroll"]["state"] == "done"
    enrolled_at = (out / "pack" / "avatar.json").stat().st_mtime

    # The same command again (with --serve) continues after enrollment, finishes, and serves the twin.
    with ServerProcess("create", str(new_person_clip), "--name", "hopper", "--size", "tiny", "--budget",
                       TINY_BUDGET, "--out", str(out), "--serve", "--port", "0", "-q", startup_s=400) as server:
        printed = "\n".join(server.lines)
        assert "resuming the stored plan after enroll" in printed
        assert f"serve it: twincast serve --twin hopper={out}" in printed
        assert "live: " in printed and "dB PSNR" in printed  # the eval figures
        assert (out / "pack" / "avatar.json").stat().st_mtime == enrolled_at  # not enrolled again
        stats = wait_until(lambda: _stats_if_rendering(server), 30, what="the twin rendering")
        assert stats["twin"] == "hopper"
        media = asyncio.run(pull(server.url, 1.5))
        assert len(media.video) > 10
        assert media.video[-1].shape[:2] == (256, 256)  # the clip's own frame
    state = json.loads((out / "create.json").read_text())
    assert state["state"] == "done"
    assert all(state["stages"][stage]["state"] == "done" for stage in ("enroll", "teacher", "eval", "export"))
    for name in ("twin.onnx", "twin.json", "eval.json", "eval.mp4", "contact_sheet.png", "pack/report.json",
                 "run/checkpoint.pt"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["live_variant"] in evaluated["variants"]
    sidecar = json.loads((out / "twin.json").read_text())
    assert sidecar["steps"] == 2 and sidecar["source"]["variant"] == "teacher"


def _stats_if_rendering(server: ServerProcess) -> dict[str, object] | None:
    status, stats = server.get("/api/stats")
    return stats if status == 200 and stats.get("fps", 0) > 5 else None


def test_footage_without_a_face_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    clip = tmp_path / "wall.mp4"
    _write_clip(clip, seconds=4.0, with_audio=True)
    out = tmp_path / "twins" / "wall"
    result = run_cli("create", str(clip), "--name", "wall", "--size", "tiny", "--budget", "1m", "--out", str(out),
                     check=False)
    assert result.returncode == 2
    assert "no face in most of wall.mp4" in result.stderr and "found in 0 of 8 frames" in result.stderr
    assert not (out / "create.json").exists() and not (out / "pack").exists()


def test_footage_without_sound_is_refused(tmp_path: Path) -> None:
    clip = tmp_path / "mute.mp4"
    _write_clip(clip, seconds=4.0, with_audio=False)
    result = run_cli("create", str(clip), "--name", "mute", "--size", "tiny", "--out", str(tmp_path / "mute"),
                     check=False)
    assert result.returncode == 2 and "has no audio track" in result.stderr


def test_a_budget_too_short_is_refused_with_one_that_fits(new_person_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "hurried"
    result = run_cli("create", str(new_person_clip), "--name", "hurried", "--size", "tiny", "--budget", "3s",
                     "--out", str(out), check=False)
    assert result.returncode == 2 and "too short" in result.stderr and "give --budget" in result.stderr
    assert not (out / "create.json").exists()
    unitless = run_cli("create", str(new_person_clip), "--name", "x", "--budget", "15", check=False)
    assert unitless.returncode == 2 and "must have units, like 90s, 15m" in unitless.stderr


def _write_clip(path: Path, *, seconds: float, with_audio: bool) -> None:
    """A clip of a slowly moving gradient (no face), with a tone or without sound."""
    frames = int(seconds * 25)
    ys, xs = np.mgrid[0:128, 0:128]
    with VideoWriter(path, width=128, height=128, fps=25, audio_rate_hz=PLAYBACK_RATE_HZ if with_audio else None
                     ) as writer:
        for index in range(frames):
            rgb = np.stack([(xs + index) % 256, ys, 128 + 0 * xs], axis=-1).astype(np.uint8)
            t = (np.arange(PLAYBACK_SAMPLES_PER_FRAME) + index * PLAYBACK_SAMPLES_PER_FRAME) / PLAYBACK_RATE_HZ
            writer.write(rgb, (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32) if with_audio else None)
