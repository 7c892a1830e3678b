"""docker-compose.yml is checked with Debian's docker-compose (``config`` needs no Docker engine)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is missing: install Debian's docker-compose (make test does this as root)")
    return subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                          text=True, env={**os.environ, **env}, cwd=ROOT, timeout=60, check=False)


def test_compose_runs_twincast_serve_on_an_nvidia_gpu() -> None:
    result = _config({"TWINCAST_OPERATOR_TOKEN": "t", "TWINCAST_AVATAR": "shop"})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "driver: nvidia" in text
    assert "- gpu" in text and "count: 1" in text
    assert "network_mode: host" in text  # WebRTC media needs the host's UDP ports
    assert "/data/avatars/shop" in text and "/data/models/shop/twin.onnx" in text
    assert "- serve" in text
    assert "TWINCAST_SERVE_MAX_BATCH: '16'" in text or "TWINCAST_SERVE_MAX_BATCH: \"16\"" in text


def test_compose_refuses_to_start_without_an_operator_token() -> None:
    env = {key: value for key, value in os.environ.items() if key != "TWINCAST_OPERATOR_TOKEN"}
    binary = shutil.which("docker-compose") or "docker-compose"
    result = subprocess.run([binary, "-f", str(ROOT / "docker-compose.yml"), "config"], capture_output=True,
                            text=True, env=env, cwd=ROOT, timeout=60, check=False)
    assert result.returncode != 0
    assert "TWINCAST_OPERATOR_TOKEN" in result.stderr
