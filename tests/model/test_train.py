import json
from pathlib import Path

import pytest

from model.checkpoint import load_checkpoint
from model.config import ModelConfig, preset
from tests.helpers import run_cli
from twincast.errors import InputError


def test_tiny_training_learns_and_checkpoint_carries_config(run_dir: Path, pack: Path) -> None:
    report = json.loads((run_dir / "train.json").read_text())
    curve = report["loss_every_10"]
    assert sum(curve[-3:]) / 3 < 0.6 * sum(curve[:3]) / 3  # the loss fell substantially
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.model.preset == "tiny"
    assert checkpoint.model.crop_px == 64  # adopted from the pack
    assert checkpoint.step == 150
    assert checkpoint.pack["crop_px"] == 64
    network = checkpoint.build()
    assert sum(p.numel() for p in network.parameters()) == report["parameters"]


def test_existing_run_is_not_overwritten(run_dir: Path, pack: Path) -> None:
    result = run_cli("train", str(pack), "--config", "tiny", "--out", str(run_dir), "--steps", "1", check=False)
    assert result.returncode == 2
    assert "already holds a run" in result.stderr


def test_unknown_preset_and_bad_shapes_are_named() -> None:
    with pytest.raises(InputError, match="unknown model config 'huge'"):
        preset("huge")
    with pytest.raises(InputError, match="crop_px 100 must be a multiple"):
        ModelConfig(crop_px=100, patch_px=4, channels=(16, 32))


def test_presets_have_their_intended_sizes() -> None:
    from model.networks import TwinDenoiser

    counts = {name: sum(p.numel() for p in TwinDenoiser(preset(name).model).parameters())
              for name in ("tiny", "demo", "base")}
    assert counts["tiny"] < 1e6
    assert counts["demo"] < 4e6  # the committed checkpoint stays small
    assert counts["base"] > 2e7  # "tens of millions" for the GPU size
