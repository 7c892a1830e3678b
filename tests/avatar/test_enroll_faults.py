"""Enrollment of footage with the faults real recordings have, each injected into the synthetic clip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from avatar.pack import AvatarPack
from avatar.quality import FLAG_BITS
from tests.avatar.faults import at_rate, decode, encode, encode_camera, lag_of_best_match, place
from tests.helpers import run_cli

SECOND = 25


@pytest.fixture(scope="module")
def source(clip: Path) -> tuple[list[np.ndarray], np.ndarray, dict[str, Any]]:
    frames, audio = decode(clip)
    return frames, audio, json.loads(clip.with_suffix(".json").read_text())


def _enroll(video: Path, out: Path, *extra: str, config: str | None = None) -> AvatarPack:
    args = ["enroll", str(video), "--out", str(out), "--crop-px", "64", "-q", *extra]
    if config is not None:
        toml = out.parent / f"{out.name}.toml"
        toml.write_text(config)
        args += ["--config-file", str(toml)]
    run_cli(*args)
    return AvatarPack.load(out)


def _flagged(pack: AvatarPack, reason: str) -> np.ndarray:
    return (np.asarray(pack.array("flags")) & FLAG_BITS[reason]) != 0


def test_phone_recording_rotated_30fps_with_44k_stereo_audio(source: Any, pack: Path, tmp_path: Path) -> None:
    frames, audio, truth = source
    tall = [np.pad(rgb, ((32, 32), (0, 0), (0, 0)), mode="edge") for rgb in frames]  # 320 high, 256 wide
    stored = [np.ascontiguousarray(np.rot90(rgb, -1)) for rgb in tall]  # the sensor's landscape frames
    frames_30, times_30 = at_rate(stored, 30)
    video = encode(tmp_path / "phone.mov", frames_30, times_30, audio, rotation=90, audio_rate_hz=44100,
                   channels=2)
    enrolled = _enroll(video, tmp_path / "phone")
    meta = enrolled.meta
    assert meta.source["rotation"] == 90 and meta.source["fps"] == pytest.approx(30, abs=0.5)
    assert (meta.frame_width, meta.frame_height) == (256, 320)  # upright, as the phone showed it
    assert abs(meta.frame_count - len(frames)) <= 1  # 30 fps resampled to the 25 fps clock
    clean = AvatarPack.load(pack)
    upright = np.corrcoef(np.asarray(enrolled.array("crops"), np.float32).mean(axis=0).ravel(),
                          np.asarray(clean.array("crops"), np.float32).mean(axis=0).ravel())[0, 1]
    assert upright > 0.9  # the aligned crops look like those of the unrotated clip
    lag, correlation = lag_of_best_match(np.asarray(clean.array("mouth_open")),
                                         np.asarray(enrolled.array("mouth_open")))
    assert lag == 0 and correlation > 0.8  # frame timing survives the 30 fps → 25 fps resampling
    assert meta.source["audio_rate_hz"] == 44100 and meta.source["audio_channels"] == 2
    ours, theirs = np.asarray(enrolled.array("audio_16k")), np.asarray(clean.array("audio_16k"))
    count = min(len(ours), len(theirs))
    assert np.corrcoef(ours[:count], theirs[:count])[0, 1] > 0.9  # 44.1 kHz stereo → the same 16 kHz mono
    assert np.asarray(enrolled.array("valid")).mean() > 0.9


def test_variable_frame_rate_60fps_with_dropped_frames(source: Any, pack: Path, tmp_path: Path) -> None:
    frames, audio, _ = source
    frames_60, times_60 = at_rate(frames, 60)
    keep = np.random.default_rng(3).random(len(frames_60)) > 0.35  # a third of the frames dropped at random
    keep[0] = True
    video = encode(tmp_path / "vfr.mkv", [f for f, k in zip(frames_60, keep, strict=True) if k],
                   [t for t, k in zip(times_60, keep, strict=True) if k], audio)
    enrolled = _enroll(video, tmp_path / "vfr")
    assert abs(enrolled.meta.frame_count - len(frames)) <= 1
    assert enrolled.meta.source["format"] == "matroska,webm"
    lag, correlation = lag_of_best_match(np.asarray(AvatarPack.load(pack).array("mouth_open")),
                                         np.asarray(enrolled.array("mouth_open")))
    assert lag == 0 and correlation > 0.8


def test_crowded_footage_is_flagged_frame_by_frame(source: Any, tmp_path: Path) -> None:
    frames, audio, _ = source
    rng = np.random.default_rng(0)
    big = [cv2.resize(rgb, (320, 320)) for rgb in frames]
    skin = frames[0][70:84, 112:150]  # forehead: the colour of a hand over the mouth
    edited = []
    for index, rgb in enumerate(frames):
        subject = rgb.copy()
        if 1 * SECOND <= index < int(1.6 * SECOND):  # a hand covers the mouth
            subject[126:172, 98:158] = cv2.resize(skin, (60, 46))
        layers = [(subject, 40, 32)]
        if 2 * SECOND <= index < int(3.5 * SECOND):  # a bigger face walks in beside them, and out again
            step = min(index - 2 * SECOND + 1, int(3.5 * SECOND) - index, 8)
            layers.append((big[(index + 60) % len(big)], 680 - 340 * step // 8, 0))
        if 4 * SECOND <= index < int(5.5 * SECOND):  # the subject leaves the frame
            layers = []
        canvas = place((320, 680), layers)
        if index >= 6 * SECOND:  # a hard cut to a closer, shifted shot
            canvas = place((320, 680), [(cv2.resize(subject, (300, 300)), 300, 10)], background=160)
        if int(7.2 * SECOND) <= index < int(7.7 * SECOND):  # fast motion smears the picture
            canvas = cv2.blur(canvas, (21, 5))
        edited.append(canvas + rng.integers(0, 3, canvas.shape, dtype=np.uint8))
    video = encode(tmp_path / "crowd.mp4", edited, [i / 25 for i in range(len(edited))], audio)
    enrolled = _enroll(video, tmp_path / "crowd", "--report")
    flags = {reason: _flagged(enrolled, reason) for reason in FLAG_BITS}

    def share(reason: str, start_s: float, end_s: float) -> float:
        return float(flags[reason][int(start_s * SECOND) : int(end_s * SECOND)].mean())

    assert share("occluded_mouth", 1.05, 1.55) > 0.7
    assert share("other_face_dominant", 2.3, 3.2) > 0.7
    assert share("no_face", 4.1, 5.4) > 0.9
    assert flags["scene_cut"][6 * SECOND - 1 : 6 * SECOND + 2].any()
    assert share("motion_blur", 7.25, 7.65) > 0.7
    quiet = np.ones(len(edited), bool)
    for start, end in ((1, 1.6), (2, 3.5), (4, 5.5), (5.9, 6.2), (7.2, 7.7)):
        quiet[int(start * SECOND) - 1 : int(end * SECOND) + 2] = False
    assert np.asarray(enrolled.array("valid"))[quiet].mean() > 0.9  # the clean stretches are kept
    # The subject is followed, not swapped for the bigger face; after the cut, they are found again at once.
    landmarks = np.asarray(enrolled.array("landmarks"))
    centres = landmarks.mean(axis=1)  # NaN where the subject is not in view
    assert np.nanmax(centres[: 6 * SECOND, 0]) < 330
    assert np.isfinite(centres[6 * SECOND + 3 : 7 * SECOND, 0]).all()
    assert np.nanmin(centres[6 * SECOND + 3 :, 0]) > 330
    transforms = np.asarray(enrolled.array("transforms"))
    after = 6 * SECOND + 3  # the smoothed track does not drag the crop across the cut
    eyes = landmarks[after][[33, 263]] @ transforms[after][:, :2].T + transforms[after][:, 2]
    assert np.abs(eyes[:, 1] - 0.33 * 64).max() < 4
    report = json.loads((tmp_path / "crowd" / "report.json").read_text())
    assert report["max_faces_in_a_frame"] == 2
    for reason in ("no_face", "other_face_dominant", "occluded_mouth", "scene_cut", "motion_blur"):
        assert report["rejected_frames"][reason] > 0, reason
    assert report["usable_s"] < report["duration_s"] - 3
    sheet = cv2.imread(str(tmp_path / "crowd" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] >= 1000 and sheet.std() > 20


def test_long_silence_becomes_an_idle_segment_and_the_base_loop(source: Any, tmp_path: Path) -> None:
    frames, audio, truth = source
    closed = int(np.argmin(truth["mouth_open"][:SECOND]))
    lead = frames[: SECOND // 2]
    still = [lead[(closed + k) % len(lead)] for k in range(4 * SECOND)]  # 4 s of closed mouth, with sway
    cut_at = int(np.flatnonzero(np.array(truth["mouth_open"]) > 0.2)[-1]) - 2 * SECOND  # mid-speech pause
    cut_at = int(cut_at + np.argmin(truth["mouth_open"][cut_at : cut_at + SECOND]))
    new_frames = frames[:cut_at] + still + frames[cut_at:]
    per_frame = len(audio) // len(frames)
    new_audio = np.concatenate([audio[: cut_at * per_frame], np.zeros(4 * SECOND * per_frame, np.float32),
                                audio[cut_at * per_frame :]])
    video = encode(tmp_path / "pause.mp4", new_frames, [i / 25 for i in range(len(new_frames))], new_audio)
    enrolled = _enroll(video, tmp_path / "pause", "--report", config="[enroll]\nbase_loop_s = 3.5\n")
    speech = np.asarray(enrolled.array("speech"))
    assert not speech[cut_at + 3 : cut_at + 4 * SECOND - 3].any()
    assert speech[: cut_at].mean() > 0.3
    longest = max(enrolled.meta.idle_segments, key=lambda seg: seg["end"] - seg["start"])
    assert longest["start"] <= cut_at + 5 and longest["end"] >= cut_at + 4 * SECOND - 5
    assert longest["loop"] in ("loop", "ping-pong")
    start, end = enrolled.meta.base_range
    assert longest["start"] <= start and end <= longest["end"] and end - start == int(3.5 * SECOND)
    report = json.loads((tmp_path / "pause" / "report.json").read_text())
    assert any(seg["end_s"] - seg["start_s"] >= 3.5 for seg in report["idle_segments"])
    assert report["audio"]["speech_fraction"] < 0.7


def test_signals_follow_the_truth(pack: Path, clip: Path) -> None:
    truth = json.loads(clip.with_suffix(".json").read_text())
    loaded = AvatarPack.load(pack)
    blink = np.asarray(loaded.array("blink"))
    closure = np.array(truth["blink"])[: len(blink)]
    assert np.corrcoef(blink, closure)[0, 1] < -0.3  # the eyes' openness dips in each blink
    speech = np.asarray(loaded.array("speech"))
    opening = np.array(truth["mouth_open"])[: len(speech)]
    assert ((opening > 0.05) == speech).mean() > 0.85
    pose = np.asarray(loaded.array("pose"))
    roll_truth = np.array(truth["head_motion"]["angle_deg"])[: len(pose)]
    assert np.corrcoef(pose[:, 2], roll_truth)[0, 1] > 0.5 or np.corrcoef(-pose[:, 2], roll_truth)[0, 1] > 0.5
    bank = loaded.meta.reference_bank
    assert len(bank) == 8 and len(set(bank)) == 8 and bank[0] == loaded.meta.reference_index
    assert set(bank) <= set(loaded.train_indices())
    assert loaded.reference_bank_crops().shape == (8, 64, 64, 3)


def test_truncated_file_is_refused_and_nothing_is_written(clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[: clip.stat().st_size * 6 // 10])
    result = run_cli("enroll", str(cut), "--out", str(tmp_path / "pack"), "-q", check=False)
    assert result.returncode == 2 and "corrupt, truncated or not a video" in result.stderr
    assert not (tmp_path / "pack").exists()
    frames, audio = decode(clip)
    camera = encode_camera(tmp_path / "camera.avi", frames, audio, video_codec="mpeg4", audio_codec="ac3")
    cut_avi = tmp_path / "cut.avi"  # an AVI cut short still plays: only its header knows how long it was
    cut_avi.write_bytes(camera.read_bytes()[: camera.stat().st_size * 6 // 10])
    result = run_cli("enroll", str(cut_avi), "--out", str(tmp_path / "pack"), "-q", check=False)
    assert result.returncode == 2 and "is truncated or corrupt" in result.stderr
    assert not (tmp_path / "pack").exists()
    text = tmp_path / "notes.mp4"
    text.write_text("these are not the frames you are looking for\n" * 50)
    result = run_cli("enroll", str(text), "--out", str(tmp_path / "pack"), "-q", check=False)
    assert result.returncode == 2 and "not a readable video" in result.stderr
    assert not (tmp_path / "pack").exists()


def test_too_little_usable_footage_is_refused_with_the_amounts(clip: Path, tmp_path: Path) -> None:
    toml = tmp_path / "strict.toml"
    toml.write_text("[enroll]\nmin_usable_s = 60\n")
    out = tmp_path / "pack"
    result = run_cli("enroll", str(clip), "--out", str(out), "--config-file", str(toml), "-q", check=False)
    assert result.returncode == 2
    assert "s of usable footage before the holdout block" in result.stderr
    assert "at least 60.0 s is needed" in result.stderr
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".pack")]
