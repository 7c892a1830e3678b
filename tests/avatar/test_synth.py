import json
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import PLAYBACK_RATE_HZ
from avatar.landmarks import FaceLandmarker, mouth_opening
from avatar.video_io import iter_frames, probe, read_audio
from tests.helpers import run_cli


def test_clip_is_25fps_with_speech_track_and_truth(clip: Path) -> None:
    info = probe(clip)
    truth = json.loads(clip.with_suffix(".json").read_text())
    assert (info.width, info.height, info.fps) == (256, 256, 25.0)
    assert info.audio_rate_hz == PLAYBACK_RATE_HZ
    assert len(truth["mouth_open"]) == truth["frame_count"]
    assert truth["duration_s"] == pytest.approx(info.duration_s, abs=0.1)
    assert max(truth["blink"]) == 1.0  # at least one full blink
    assert np.ptp(truth["head_motion"]["angle_deg"]) > 0.5  # the head sways


def test_mouth_opens_with_speech_and_landmarks_see_it(clip: Path) -> None:
    truth = json.loads(clip.with_suffix(".json").read_text())
    opening = np.array(truth["mouth_open"])
    audio = read_audio(clip, PLAYBACK_RATE_HZ)
    frames = audio[: len(opening) * 1920].reshape(-1, 1920)
    loudness = np.sqrt((frames**2).mean(axis=1))
    assert np.corrcoef(opening[: len(loudness)], loudness)[0, 1] > 0.6
    assert opening[:10].max() < 0.05  # the lead silence keeps the mouth closed
    measured = []
    with FaceLandmarker(video=True) as landmarker:
        for _, rgb in iter_frames(clip, 25):
            points = landmarker.detect(rgb)
            assert points is not None
            measured.append(mouth_opening(points))
    assert np.corrcoef(opening, np.array(measured[: len(opening)]))[0, 1] > 0.7


def test_portrait_without_a_face_is_refused(tmp_path: Path) -> None:
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((256, 256, 3), 180, np.uint8))
    out = tmp_path / "out.mp4"
    result = run_cli("synth-footage", "--portrait", str(blank), "--text", "hi", "--out", str(out), check=False)
    assert result.returncode != 0
    assert "no face found in portrait" in result.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert list(tmp_path.iterdir()) == [blank]
