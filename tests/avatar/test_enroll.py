import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avatar.audio import PLAYBACK_SAMPLES_PER_FRAME
from avatar.pack import AvatarPack
from avatar.video_io import VideoWriter
from tests.helpers import run_cli
from twincast.errors import InputError


def test_pack_holds_the_contract(pack: Path, clip: Path) -> None:
    loaded = AvatarPack.load(pack)
    meta = loaded.meta
    assert meta.fps == 25 and meta.crop_px == 64
    assert (meta.frame_width, meta.frame_height) == (256, 256)
    start, end = meta.holdout
    assert end == meta.frame_count and end - start >= 0.1 * meta.frame_count
    assert set(loaded.train_indices()).isdisjoint(range(start, end))
    assert loaded.array("crops").shape == (meta.frame_count, 64, 64, 3)
    assert loaded.array("mel").shape == (meta.frame_count, 80, 16)
    assert loaded.array("valid").mean() > 0.95
    frames = loaded.base_frames()
    assert frames.shape[0] == meta.base_range[1] - meta.base_range[0]
    assert meta.source["sha256"]
    # The aligned crops keep the eyes where the template puts them: the face is centred and steady.
    crops = np.asarray(loaded.array("crops"), np.float32)
    upper = crops[:, 10:30, 16:48].mean(axis=(1, 2, 3))
    assert upper.std() < 6.0


def test_mouth_signal_of_pack_tracks_truth(pack: Path, clip: Path) -> None:
    truth = np.array(json.loads(clip.with_suffix(".json").read_text())["mouth_open"])
    measured = np.asarray(AvatarPack.load(pack).array("mouth_open"))
    count = min(len(truth), len(measured))
    assert np.corrcoef(truth[:count], measured[:count])[0, 1] > 0.7


def test_loader_names_a_schema_mismatch(pack: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    meta = json.loads((copy / "avatar.json").read_text())
    meta["schema_version"] = 99
    (copy / "avatar.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="schema_version 99"):
        AvatarPack.load(copy)


def test_loader_names_a_wrong_array_shape(pack: Path, tmp_path: Path) -> None:
    copy = tmp_path / "pack"
    shutil.copytree(pack, copy)
    np.save(copy / "mouth_open.npy", np.zeros(3, np.float32))
    with pytest.raises(InputError, match=r"mouth_open.npy has shape \(3,\)"):
        AvatarPack.load(copy)


def _assert_refused(args: list[str], out: Path, message: str) -> None:
    result = run_cli("enroll", *args, "--out", str(out), "-q", check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no partial output


def test_missing_video_is_refused(tmp_path: Path) -> None:
    _assert_refused([str(tmp_path / "nope.mp4")], tmp_path / "pack", "does not exist")


def test_image_given_as_video_is_refused(tmp_path: Path) -> None:
    image = Path(__file__).resolve().parents[2] / "assets" / "portrait.png"
    _assert_refused([str(image)], tmp_path / "pack", "is a still image")


def test_video_without_a_face_is_refused(tmp_path: Path) -> None:
    video = tmp_path / "wall.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(video, width=128, height=128, fps=25) as writer:
        for _ in range(100):
            writer.write(np.full((128, 128, 3), 120, np.uint8),
                         rng.standard_normal(PLAYBACK_SAMPLES_PER_FRAME).astype(np.float32) * 0.1)
    _assert_refused([str(video)], tmp_path / "pack", "no face in most frames")


def test_video_without_audio_is_refused(tmp_path: Path, clip: Path) -> None:
    import av

    silent = tmp_path / "silent.mp4"
    with av.open(str(clip)) as source, av.open(str(silent), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            target.mux(packet)
    _assert_refused([str(silent)], tmp_path / "pack", "has no audio track")


def test_existing_pack_is_not_overwritten_without_force(pack: Path, clip: Path) -> None:
    before = (pack / "avatar.json").read_text()
    result = run_cli("enroll", str(clip), "--out", str(pack), "-q", check=False)
    assert result.returncode == 2 and "already exists" in result.stderr
    assert (pack / "avatar.json").read_text() == before
