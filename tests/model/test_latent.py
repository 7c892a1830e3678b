"""Latent models (``base``'s design, tested at ``tiny-latent`` width): the person's autoencoder first, then the
teacher, student and baseline on its latents, the decoder inside the exported graph, and a live server on it."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from engines import EngineOptions, create_engine
from engines.bench import random_inputs
from export.spec import load_spec
from model.autoencoder import load_autoencoder
from model.checkpoint import load_checkpoint
from model.config import ModelConfig, preset
from model.data import to_unit_range
from stream.whep_client import pull
from tests.helpers import ServerProcess, run_cli, wait_until
from twincast.errors import InputError

TINY_LATENT = preset("tiny-latent", crop_px=64).model


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory: pytest.TempPathFactory, pack: Path) -> Path:
    """A tiny-latent run: autoencoder, teacher, 2-step student and regression baseline."""
    out = tmp_path_factory.mktemp("latent") / "run"
    run_cli("train-ae", str(pack), "--config", "tiny-latent", "--out", str(out), "--steps", "150", "-q")
    run_cli("train", str(pack), "--config", "tiny-latent", "--out", str(out), "--steps", "150", "-q")
    run_cli("distill", str(out), "-q")
    run_cli("train", str(pack), "--config", "tiny-latent", "--objective", "regression", "--out", str(out),
            "--steps", "100", "-q")
    return out


@pytest.fixture(scope="module")
def latent_artifact(latent_run: Path) -> Path:
    out = latent_run.parent / "artifact" / "twin.onnx"
    run_cli("export", str(latent_run), "--out", str(out))
    return out


def test_a_latent_model_asks_for_its_autoencoder_first(pack: Path, tmp_path: Path) -> None:
    result = run_cli("train", str(pack), "--config", "tiny-latent", "--out", str(tmp_path / "run"), "--steps", "2",
                     check=False)
    assert result.returncode != 0 and "twincast train-ae" in result.stderr and "autoencoder" in result.stderr
    result = run_cli("train-ae", str(pack), "--config", "tiny", "--out", str(tmp_path / "run"), check=False)
    assert result.returncode == 2 and "needs no autoencoder" in result.stderr


def test_autoencoder_config_must_reach_the_unet_resolution() -> None:
    with pytest.raises(InputError, match="log2"):
        ModelConfig(latent_channels=4, ae_channels=(8, 16, 32))  # 3 downsamplings but patch_px 4 needs 2


def test_the_autoencoder_reconstructs_and_its_latents_are_standardised(latent_run: Path, pack: Path) -> None:
    from avatar.pack import AvatarPack

    report = json.loads((latent_run / "autoencoder.json").read_text())
    curve = report["loss_every_10"]
    assert np.mean(curve[-3:]) < 0.6 * np.mean(curve[:3])  # it learned
    assert report["holdout_psnr_face"] > 20 and report["latent_shape"] == [4, 16, 16]
    autoencoder = load_autoencoder(latent_run, TINY_LATENT)
    avatar = AvatarPack.load(pack)
    crops = torch.from_numpy(np.asarray(avatar.array("crops"))[avatar.train_indices()])
    with torch.no_grad():
        latents = autoencoder.encode(to_unit_range(crops))
    assert latents.shape[1:] == (4, 16, 16)
    assert latents.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (latents.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_teacher_student_and_baseline_keep_the_trained_autoencoder(latent_run: Path) -> None:
    trained = load_checkpoint(latent_run, "autoencoder").state_dict
    for role in ("teacher", "student", "baseline"):
        weights = load_checkpoint(latent_run, role).state_dict
        for key, value in trained.items():
            assert torch.equal(weights[f"autoencoder.{key}"], value), (role, key)
    curve = json.loads((latent_run / "train.json").read_text())["loss_every_10"]
    assert np.mean(curve[-3:]) < np.mean(curve[:3])


def test_eval_scores_every_variant_of_a_latent_run(latent_run: Path) -> None:
    report = json.loads(run_cli("eval", str(latent_run), "--json", "--no-video", "-q").stdout)
    assert set(report["variants"]) == {"teacher_25", "teacher_2", "student_2", "student_1", "baseline_1"}
    for name, row in report["variants"].items():
        assert 10 < row["psnr_mouth"] < 60 and row["psnr_face"] > row["psnr_mouth"], name


def test_the_exported_graph_takes_latent_noise_and_ends_in_the_decoder(latent_artifact: Path, pack: Path) -> None:
    spec = load_spec(latent_artifact)
    assert spec.input("noise").shape == ("batch", 4, 16, 16)
    assert spec.input("masked_crop").shape == ("batch", 3, 64, 64) and spec.outputs[0].shape[1:] == (3, 64, 64)
    onnx_engine = create_engine("onnxruntime", latent_artifact, EngineOptions(threads=1))
    reference = create_engine("torch", latent_artifact, EngineOptions(threads=1))
    inputs = random_inputs(onnx_engine, 3, seed=4)
    faces = onnx_engine(inputs)
    assert faces.shape == (3, 3, 64, 64)
    assert np.abs(faces - reference(inputs)).max() < 2e-3
    # Rows above the mask line are the masked crop's own pixels: only the lower face is generated.
    top = int(np.ceil(spec.mask_top * 64 - 0.5))
    assert np.allclose(faces[:, :, :top - 1], np.clip(inputs["masked_crop"][:, :, :top - 1], -1, 1), atol=1e-5)
    assert np.abs(faces[:, :, top + 1:] - inputs["masked_crop"][:, :, top + 1:]).mean() > 0.05


def test_a_latent_twin_streams_live(latent_artifact: Path, pack: Path) -> None:
    with ServerProcess("serve", "--avatar", str(pack), "--model", str(latent_artifact), "--port", "0",
                       "--pose", "still") as server:
        wait_until(lambda: server.get("/api/stats")[1]["fps"] >= 12, 15, what="fps ≥ 12")  # it keeps up
        media = asyncio.run(pull(server.url, 2.0))
        assert len(media.video) >= 25 and media.video[0].shape == (256, 256, 3)


def test_pack_carry_round_trips_a_pack(pack: Path, tmp_path: Path) -> None:
    from avatar.pack import AvatarPack
    from bench.pack_carry import pack as carry
    from bench.pack_carry import unpack

    carry(pack, tmp_path / "carried")
    unpack(tmp_path / "carried", tmp_path / "again")
    original, restored = AvatarPack.load(pack), AvatarPack.load(tmp_path / "again")
    assert np.array_equal(np.asarray(original.array("mel")), np.asarray(restored.array("mel")))
    error = np.abs(np.asarray(original.array("crops"), np.float32) - np.asarray(restored.array("crops"), np.float32))
    assert 0 < error.mean() < 3  # JPEG: close, not identical
    shutil.rmtree(tmp_path / "carried")
