"""The CLI refuses bad input with a message that names the problem, a non-zero exit and no partial output."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_cli


def test_empty_text_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    result = run_cli("synth-footage", "--text", "  ", "--out", str(out), check=False)
    assert result.returncode == 2
    assert "text is empty" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_missing_portrait_is_named(tmp_path: Path) -> None:
    result = run_cli("synth-footage", "--portrait", str(tmp_path / "me.png"), "--text", "hi",
                     "--out", str(tmp_path / "clip.mp4"), check=False)
    assert result.returncode == 2 and "me.png does not exist" in result.stderr


def test_serve_names_a_missing_pack(tmp_path: Path, artifact: Path) -> None:
    result = run_cli("serve", "--avatar", str(tmp_path / "nobody"), "--model", str(artifact), "--port", "0",
                     check=False)
    assert result.returncode == 2 and "is not an avatar pack" in result.stderr


def test_serve_names_a_missing_model(tmp_path: Path, pack: Path) -> None:
    result = run_cli("serve", "--avatar", str(pack), "--model", str(tmp_path / "twin.onnx"), check=False)
    assert result.returncode == 2 and "no model artifact" in result.stderr


def test_serve_refuses_a_pack_the_model_was_not_built_for(tmp_path: Path, artifact: Path, clip: Path) -> None:
    other = tmp_path / "pack96"
    run_cli("enroll", str(clip), "--out", str(other), "--crop-px", "96", "-q")
    result = run_cli("serve", "--avatar", str(other), "--model", str(artifact), "--port", "0", check=False)
    assert result.returncode == 2
    assert "crop_px=96" in result.stderr and "crop_px=64" in result.stderr


def test_bad_setting_from_environment_is_named(pack: Path, artifact: Path) -> None:
    import os
    import subprocess

    from tests.helpers import TWINCAST

    env = {**os.environ, "TWINCAST_SERVE_PORT": "eighty"}
    result = subprocess.run([TWINCAST, "serve", "--avatar", str(pack), "--model", str(artifact)],
                            capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 2 and "TWINCAST_SERVE_PORT: cannot read 'eighty' as int" in result.stderr
