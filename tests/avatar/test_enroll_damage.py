"""Enrollment of files with damaged packets, as phone, webcam and camera files often have: decoded through as
players do, the damage flagged and counted, the audio around it intact and on its timestamps; a file that is
mostly garbage is refused."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import FEATURE_RATE_HZ
from avatar.pack import AvatarPack
from avatar.quality import FLAG_BITS
from avatar.video_io import VideoDamage, decode_audio, iter_frames, probe, read_audio
from tests.avatar.faults import decode, encode_camera, overwrite, stored_packets
from tests.helpers import run_cli

FPS = 25
CODECS = {"mp4": ("libx264", "aac"), "mkv": ("libx264", "aac"), "avi": ("mpeg4", "ac3")}  # (video, audio)


@pytest.fixture(scope="module")
def source(clip: Path) -> tuple[list[np.ndarray], np.ndarray]:
    return decode(clip)


def _ffmpeg_errors(video: Path, streams: str) -> str:
    """What ``ffmpeg -v error`` says while decoding ``streams`` of ``video`` (empty for a clean file)."""
    result = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(video), "-map", streams, "-f", "null",
                             "-"], capture_output=True, text=True, timeout=120, check=False)
    return result.stderr.strip()


@pytest.mark.parametrize("container", list(CODECS))
def test_a_damaged_packet_is_decoded_through_flagged_and_counted(container: str, source: tuple[list[np.ndarray],
                                                                  np.ndarray], tmp_path: Path) -> None:
    frames, audio = source
    video_codec, audio_codec = CODECS[container]
    clean = encode_camera(tmp_path / f"clean.{container}", frames, audio, video_codec=video_codec,
                          audio_codec=audio_codec)
    sound, pictures = stored_packets(clean, "audio"), stored_packets(clean, "video")
    lost_sound = next(packet for packet in sound if packet.time_s >= 1.6)
    lost_picture = next(packet for packet in pictures if packet.time_s >= 3.3 and not packet.keyframe
                        and packet.size >= 200)  # a predicted picture with real content, not a skipped one
    next_key_s = next(packet.time_s for packet in pictures if packet.keyframe and packet.offset > lost_picture.offset)
    damaged = tmp_path / f"damaged.{container}"
    shutil.copy(clean, damaged)
    overwrite(damaged, [lost_sound, lost_picture])
    assert _ffmpeg_errors(clean, "0") == ""
    assert _ffmpeg_errors(damaged, "0:a") and _ffmpeg_errors(damaged, "0:v")  # ffmpeg sees both, as in the camera file

    out = tmp_path / "pack"
    run_cli("enroll", str(damaged), "--out", str(out), "--crop-px", "64", "-q", "--report")
    pack = AvatarPack.load(out)
    report = json.loads((out / "report.json").read_text())
    assert pack.meta.frame_count == len(frames)  # nothing lost from the timeline

    # The lost audio is silence of its own length; the rest is the clean file's audio on the same samples.
    [(start_s, end_s)] = report["damage"]["audio_spans_s"]
    assert start_s - 0.05 <= lost_sound.time_s < end_s <= lost_sound.time_s + 0.1
    ours = np.asarray(pack.array("audio_16k"))
    truth = read_audio(clean, FEATURE_RATE_HZ)[: ours.size]
    first, last = round(start_s * FEATURE_RATE_HZ), round(end_s * FEATURE_RATE_HZ)
    edge = FEATURE_RATE_HZ // 500  # the resampler's filter rings for a millisecond or two at the silence's edges
    assert np.abs(ours[first + edge : last - edge]).max() < 1e-4
    around = np.ones(ours.size, bool)
    around[first - FEATURE_RATE_HZ // 100 : last + FEATURE_RATE_HZ // 10] = False  # the codec's overlap after it
    residual = np.sqrt(np.mean((ours - truth)[around] ** 2) / np.mean(truth[around] ** 2))
    assert residual < 0.05  # the decoders' noise fill drifts after a lost frame (~1 %); a sample of shift is ~40 %

    flagged = set(np.flatnonzero(np.asarray(pack.array("flags")) & FLAG_BITS["damaged"]).tolist())
    # Frames whose audio window (~45 ms ahead, ~200 ms back) reaches into the silence.
    by_audio = set(range(int(start_s * FPS) - 2, int(end_s * FPS) + 7))
    assert set(range(int(start_s * FPS), int(end_s * FPS) + 1)) <= flagged
    # The lost picture, the pictures predicted from it up to the next keyframe, and B-frames shown before it.
    lost_frame = round(lost_picture.time_s * FPS)
    by_video = set(range(lost_frame - 4, round(next_key_s * FPS)))
    assert {lost_frame, round(next_key_s * FPS) - 1} <= flagged
    assert flagged <= by_audio | by_video  # everything else is kept
    assert not np.asarray(pack.array("valid"))[sorted(flagged)].any()

    damage = report["damage"]
    assert report["rejected_frames"]["damaged"] == len(flagged)
    assert damage["audio_packets"] == 1 and damage["audio_s"] == pytest.approx(end_s - start_s, abs=1e-3)
    assert damage["video_frames"] == len(flagged & by_video) and damage["video_pictures_spoiled"] >= 1
    assert pack.meta.source["damage"] == damage
    assert pack.meta.flag_reasons[-1] == "damaged"


@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_damage_at_the_very_start_and_end_keeps_the_timeline(container: str, source: tuple[list[np.ndarray],
                                                             np.ndarray], tmp_path: Path) -> None:
    frames, audio = source
    clean = encode_camera(tmp_path / f"clean.{container}", frames, audio)
    sound, pictures = stored_packets(clean, "audio"), stored_packets(clean, "video")
    damaged = tmp_path / f"damaged.{container}"
    shutil.copy(clean, damaged)
    overwrite(damaged, [pictures[0], pictures[-1], sound[0], sound[1], sound[-1]])
    assert probe(damaged).width == frames[0].shape[1]  # the first picture that decodes says the size

    damage = VideoDamage()
    assert sum(1 for _ in iter_frames(damaged, FPS, damage)) == len(frames)
    flagged = set(np.flatnonzero(damage.frames).tolist())
    assert set(range(FPS)) <= flagged  # the first keyframe is lost, and with it everything up to the next
    assert round(pictures[-1].time_s * FPS) in flagged and FPS not in flagged
    assert damage.lost_pictures >= 2 and damage.decode_errors >= 1

    decoded = decode_audio(damaged, FEATURE_RATE_HZ)
    truth = read_audio(clean, FEATURE_RATE_HZ)
    ours = decoded.tracks[0]
    assert ours.size == truth.size and decoded.damaged_packets == 3
    (_, lead_end_s), *_, (tail_start_s, _) = decoded.damaged_spans_s
    assert decoded.damaged_spans_s[0][0] == 0.0 and decoded.damaged_spans_s[-1][1] == pytest.approx(truth.size /
                                                                                                    FEATURE_RATE_HZ)
    kept = slice(round(lead_end_s * FEATURE_RATE_HZ) + FEATURE_RATE_HZ // 10,
                 round(tail_start_s * FEATURE_RATE_HZ) - FEATURE_RATE_HZ // 100)
    assert np.sqrt(np.mean((ours[kept] - truth[kept]) ** 2) / np.mean(truth[kept] ** 2)) < 0.05


@pytest.mark.parametrize("stream", ["audio", "video"])
def test_a_file_that_is_mostly_garbage_is_refused(stream: str, source: tuple[list[np.ndarray], np.ndarray],
                                                   tmp_path: Path) -> None:
    frames, audio = source
    video = encode_camera(tmp_path / "garbage.mp4", frames, audio)
    overwrite(video, [packet for index, packet in enumerate(stored_packets(video, stream)) if index % 5], seed=1)
    assert _ffmpeg_errors(video, "0:a" if stream == "audio" else "0:v")
    out = tmp_path / "pack"
    result = run_cli("enroll", str(video), "--out", str(out), "--crop-px", "64", "-q", check=False)
    assert result.returncode == 2, result.stderr
    assert re.search(rf"is mostly unreadable: \d+% of its {stream} could be decoded", result.stderr), result.stderr
    assert "expected at least 50% of it to decode" in result.stderr
    assert not out.exists()
