"""bench.synthetic_pack: a pack made without enrollment loads, validates, and `twincast serve` renders it with a
random-weight tiny model (as bench.sessions --whole-server and bench/gpu_server.sh use it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avatar.pack import AvatarPack
from bench.gpu import make_run
from bench.synthetic_pack import MARKER_FILE, build, parse_frame_size
from export.onnx_export import export_run
from tests.helpers import ServerProcess, wait_until
from twincast.errors import InputError


def test_a_synthetic_pack_is_a_valid_pack_of_swaying_frames(tmp_path: Path) -> None:
    pack = build(tmp_path / "pack", crop_px=64, seconds=1.0, frame_size=(256, 320))
    again = AvatarPack.load(pack.root)  # validates every array's shape and dtype
    assert (again.meta.frame_count, again.meta.crop_px, again.meta.frame_width, again.meta.frame_height) == \
        (25, 64, 256, 320)
    frames = again.base_frames()
    assert frames.shape == (25, 320, 256, 3)
    crops = np.asarray(again.array("crops"), np.float32)
    assert np.abs(crops[0] - crops[12]).mean() > 0.5  # the portrait sways; the crops follow it
    assert "speed measurements only" in json.loads((pack.root / MARKER_FILE).read_text())["purpose"]


def test_bad_synthetic_pack_settings_are_refused_with_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="WIDTHxHEIGHT"):
        parse_frame_size("720x")
    with pytest.raises(InputError, match="even"):
        parse_frame_size("721x1280")
    with pytest.raises(InputError, match="crop_px 8"):
        build(tmp_path / "pack", crop_px=8)


@pytest.mark.integration  # a real server
def test_serve_renders_a_synthetic_pack_with_a_random_tiny_model(tmp_path: Path) -> None:
    onnx = export_run(make_run(tmp_path, 2, "tiny"), tmp_path / "art" / "twin.onnx", steps=2).onnx
    pack = build(tmp_path / "pack", crop_px=64, seconds=1.0)
    with ServerProcess("serve", "--model", str(onnx), "--avatar", str(pack.root), "--engine", "onnxruntime",
                       "--port", "0", "-q", cwd=tmp_path) as server:
        stats = wait_until(lambda: (body := server.get("/api/stats")[1])["render_worker"]["calls"] >= 25 and body,
                           60, what="25 engine calls")
    assert stats["frame_size"] == [512, 512]
    assert stats["render_worker"]["failures"] == 0
    assert stats["render_worker"]["paste_ms_p50"] is not None  # its faces were pasted into the pack's frames
