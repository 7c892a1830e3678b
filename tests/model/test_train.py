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
    assert "already holds a teacher (checkpoint.pt)" in result.stderr


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


def test_a_killed_run_resumes_exactly_where_it_stopped(pack: Path, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import time

    import torch

    from tests.helpers import TWINCAST

    env = {**os.environ, "TWINCAST_TRAIN_CHECKPOINT_EVERY": "20"}
    args = ["train", str(pack), "--config", "tiny", "--steps", "80", "-q"]
    straight = tmp_path / "straight"
    subprocess.run([TWINCAST, *args, "--out", str(straight)], env=env, check=True, capture_output=True)

    crashed = tmp_path / "crashed"
    process = subprocess.Popen([TWINCAST, *args, "--out", str(crashed)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (crashed / "resume-teacher.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stopped_at = torch.load(crashed / "resume-teacher.pt", weights_only=False)["step"]
    assert 20 <= stopped_at < 80
    subprocess.run([TWINCAST, *args, "--out", str(crashed), "--resume"], env=env, check=True, capture_output=True)
    resumed, reference = load_checkpoint(crashed), load_checkpoint(straight)
    assert resumed.step == reference.step == 80
    for key, value in reference.state_dict.items():
        torch.testing.assert_close(resumed.state_dict[key], value, rtol=1e-4, atol=1e-5)


def test_base_structure_trains_and_exports_at_tiny_width(pack: Path, tmp_path: Path) -> None:
    from dataclasses import replace

    from export.onnx_export import export_run
    from export.spec import load_spec
    from model.autoencoder import train_autoencoder
    from model.config import TrainConfig
    from model.train import train

    base = preset("base", crop_px=64, mask_top=0.55).model
    narrow = replace(base, channels=(16, 16, 32, 32), audio_dim=32, time_dim=32, groups=8, ae_channels=(8, 8, 16))
    assert (narrow.patch_px, narrow.blocks_per_level, narrow.attention, narrow.latent_channels) == (8, 2, True, 8)
    config = TrainConfig(steps=3, batch_size=2, autoencoder_steps=3)
    train_autoencoder(pack, tmp_path / "run", narrow, config, progress=False)
    result = train(pack, tmp_path / "run", narrow, config, progress=False)
    assert result.final_loss == result.final_loss  # finite, not NaN
    exported = export_run(tmp_path / "run", tmp_path / "art" / "twin.onnx")
    assert exported.max_abs_error < 1e-3
    assert load_spec(exported.onnx).input("noise").shape == ("batch", 8, 8, 8)  # 8 latent channels at 64 / 8
