import json
from pathlib import Path

import av
import numpy as np
import pytest

from export.spec import load_spec
from model.checkpoint import available_roles, load_checkpoint
from tests.helpers import run_cli

METRICS = {"psnr_mouth", "ssim_mouth", "psnr_face", "ssim_face", "sharpness_ratio", "sync_corr", "sync_lag_frames",
           "sync_corr_pixels", "sync_lag_frames_pixels", "ms_per_frame"}
SYNC_PAIRS = (("sync_corr", "sync_lag_frames"), ("sync_corr_pixels", "sync_lag_frames_pixels"))


def test_run_holds_teacher_student_and_baseline(full_run: Path) -> None:
    assert available_roles(full_run) == ["teacher", "student", "baseline"]
    student = load_checkpoint(full_run, "student")
    assert student.role == "student" and student.model.sample_steps == 2
    assert student.extra["teacher_step"] == 150
    baseline = load_checkpoint(full_run, "baseline")
    assert baseline.role == "baseline" and baseline.train.objective == "regression"
    curve = json.loads((full_run / "distill.json").read_text())["loss_every_10"]
    assert np.mean(curve[-2:]) < np.mean(curve[:2])  # the consistency loss fell


def test_eval_reports_every_variant_and_writes_the_side_by_side(full_run: Path) -> None:
    result = run_cli("eval", str(full_run), "--json", "-q")
    report = json.loads(result.stdout)
    assert set(report["variants"]) == {"teacher_25", "teacher_2", "student_2", "student_1", "baseline_1"}
    for name, row in report["variants"].items():
        assert set(row) == METRICS, name
        assert 5 < row["psnr_mouth"] < 60 and 0 < row["ssim_mouth"] <= 1 and row["ms_per_frame"] > 0
        assert row["psnr_face"] > row["psnr_mouth"]  # the upper face is copied, so the whole crop scores higher
        for corr, lag in SYNC_PAIRS:
            # null: undefined, one measure never moved (this short run's baseline renders no dark cavity at all)
            assert (row[corr] is None or -1 <= row[corr] <= 1) and row[lag] in range(-3, 4), (name, corr, row)
    for corr, _ in SYNC_PAIRS:  # the 25-step teacher opens and closes its mouth: both correlations are defined
        assert isinstance(report["variants"]["teacher_25"][corr], float), report["variants"]["teacher_25"]
    truth = report["truth_mouth"]
    assert truth["no_face_frames"] == 0 and 0 < truth["cavity_mean"] < 1 and truth["cavity_std"] > 0, truth
    assert json.loads((full_run / "eval.json").read_text())["variants"] == report["variants"]
    with av.open(str(full_run / "eval.mp4")) as video:
        stream = video.streams.video[0]
        assert stream.codec_context.width == 5 * 64  # truth | teacher | 2-step | 1-step | baseline
        assert video.streams.audio and video.streams.audio[0].codec_context.sample_rate == 48_000


def test_export_prefers_the_student(full_run: Path, tmp_path: Path) -> None:
    run_cli("export", str(full_run), "--out", str(tmp_path / "twin.onnx"))
    spec = load_spec(tmp_path / "twin.onnx")
    assert spec.source["variant"] == "student" and spec.steps == 2


def test_distill_refuses_to_overwrite_and_names_a_missing_teacher(full_run: Path, tmp_path: Path) -> None:
    result = run_cli("distill", str(full_run), check=False)
    assert result.returncode == 2 and "already holds a student" in result.stderr
    result = run_cli("distill", str(tmp_path), check=False)
    assert result.returncode == 2 and "no teacher checkpoint" in result.stderr


@pytest.mark.parametrize("role", ["teacher", "student", "baseline"])
def test_half_precision_storage_round_trips(full_run: Path, tmp_path: Path, role: str) -> None:
    from model.checkpoint import ROLE_FILES, save_checkpoint

    original = load_checkpoint(full_run, role)
    path = tmp_path / ROLE_FILES[role]
    save_checkpoint(path, model=original.model, train=original.train, state_dict=original.state_dict,
                    step=original.step, pack=original.pack, role=role, half=True)
    halved = load_checkpoint(path, role)
    assert path.stat().st_size < 0.6 * (full_run / ROLE_FILES[role]).stat().st_size
    for key, value in original.state_dict.items():
        assert halved.state_dict[key].dtype == value.dtype
        np.testing.assert_allclose(halved.state_dict[key].numpy(), value.numpy(), rtol=2e-3, atol=1e-4)
