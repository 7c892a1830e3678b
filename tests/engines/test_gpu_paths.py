"""Engine variants beyond the CPU defaults: fp16 graphs, fallback, the TensorRT plan cache, and the CUDA paths.

Tests marked ``gpu`` run where CUDA (and, for TensorRT, ``tensorrt``) exists and are skipped elsewhere; the
code they cover is complete either way.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from engines import EngineOptions, create_engine
from engines.base import choose_auto
from engines.bench import random_inputs
from engines.tensorrt_build import BatchProfile, plan_key
from export.spec import load_spec, sidecar_path
from tests.helpers import run_cli
from twincast.errors import ArtifactMismatchError
from twincast.files import sha256_file

FP16_TOLERANCE = 5e-2


@pytest.fixture(scope="module")
def fp16_artifact(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "twin.onnx"
    run_cli("export", str(run_dir), "--out", str(out), "--variant", "teacher", "--precision", "fp16")
    return out


def test_fp16_export_matches_the_fp32_reference_within_its_tolerance(fp16_artifact: Path, artifact: Path) -> None:
    spec = load_spec(fp16_artifact)
    assert spec.precision == "fp16" and spec.parity["tolerance"] == FP16_TOLERANCE
    assert spec.input("mel").dtype == "float32"  # callers feed float32 whatever the precision inside
    half = create_engine("onnxruntime", fp16_artifact, EngineOptions(threads=1))
    reference = create_engine("torch", artifact, EngineOptions(threads=1))
    inputs = random_inputs(half, 3, seed=5)
    error = np.abs(half(inputs) - reference(inputs)).max()
    assert 0 < error < FP16_TOLERANCE  # looser than fp32, but not identical (it really is half precision)
    initializers = onnx.load(str(fp16_artifact)).graph.initializer
    assert any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in initializers)


def test_torch_engine_fp16_on_cpu_matches_fp32(artifact: Path) -> None:
    full = create_engine("torch", artifact, EngineOptions(threads=1))
    half = create_engine("torch", artifact, EngineOptions(threads=1, precision="fp16"))
    inputs = random_inputs(full, 2, seed=6)
    assert np.abs(half(inputs) - full(inputs)).max() < FP16_TOLERANCE


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_export_unrolls_1_2_and_4_steps(run_dir: Path, tmp_path: Path, steps: int) -> None:
    out = tmp_path / "twin.onnx"
    result = json.loads(run_cli("export", str(run_dir), "--out", str(out), "--steps", str(steps),
                                "--variant", "teacher").stdout)
    assert result["max_abs_error"] < 2e-3 and load_spec(out).steps == steps
    convolutions = sum(node.op_type == "Conv" for node in onnx.load(str(out)).graph.node)
    assert convolutions > 0
    if steps == 4:  # each extra step adds a whole denoiser pass to the graph
        two = tmp_path / "two.onnx"
        run_cli("export", str(run_dir), "--out", str(two), "--steps", "2", "--variant", "teacher")
        two_convolutions = sum(node.op_type == "Conv" for node in onnx.load(str(two)).graph.node)
        assert convolutions > 1.8 * two_convolutions - 4


def test_auto_says_what_it_picked_on_this_machine(artifact: Path) -> None:
    name, why = choose_auto(EngineOptions())
    engine = create_engine("auto", artifact)
    assert engine.name == name and engine.describe()["chosen_because"] == why and why
    assert engine.describe()["fallback"] is None


def test_auto_falls_back_only_when_allowed_and_says_so(artifact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artifact.parent, broken)
    (broken / "twin.onnx").write_bytes(b"not an onnx graph at all")
    spec = json.loads(sidecar_path(broken / "twin.onnx").read_text())
    spec["onnx_sha256"] = sha256_file(broken / "twin.onnx")  # the sidecar vouches for it: only loading fails
    sidecar_path(broken / "twin.onnx").write_text(json.dumps(spec))
    with pytest.raises(ArtifactMismatchError, match="ONNX Runtime could not load twin.onnx"):
        create_engine("auto", broken / "twin.onnx", EngineOptions())
    engine = create_engine("auto", broken / "twin.onnx", EngineOptions(fallback=True))
    assert engine.name == "torch"  # the next candidate, which runs the weights directly
    assert "onnxruntime" in (engine.describe()["fallback"] or "")


def test_plan_cache_key_changes_when_any_part_does() -> None:
    base = {"onnx_sha256": "a" * 64, "tensorrt_version": "10.8.0", "compute_capability": (9, 0),
            "precision": "fp16", "profile": BatchProfile(1, 8, 32), "input_shapes": {"mel": ("batch", 80, 16)}}
    key = plan_key(**base)  # type: ignore[arg-type]
    assert key == plan_key(**base)  # type: ignore[arg-type]
    changes = [{"onnx_sha256": "b" * 64}, {"tensorrt_version": "10.9.0"}, {"compute_capability": (8, 9)},
               {"precision": "fp32"}, {"profile": BatchProfile(1, 8, 64)}, {"input_shapes": {"mel": ("batch", 80, 20)}}]
    keys = {plan_key(**{**base, **change}) for change in changes}  # type: ignore[arg-type]
    assert len(keys) == len(changes) and key not in keys


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engine_names_what_is_missing(artifact: Path, tmp_path: Path) -> None:
    result = run_cli("build-engine", str(artifact), "--cache-dir", str(tmp_path), check=False)
    assert result.returncode == 2 and "TensorRT is not installed" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
def test_torch_cuda_fp16_graphs_match_the_cpu_reference(artifact: Path) -> None:
    reference = create_engine("torch", artifact, EngineOptions(threads=1))
    graphs = create_engine("torch", artifact, EngineOptions(device="cuda", precision="fp16", cuda_graphs=True))
    for batch in (1, 3):
        inputs = random_inputs(reference, batch, seed=batch)
        assert np.abs(graphs(inputs) - reference(inputs)).max() < FP16_TOLERANCE
        assert np.abs(graphs(inputs) - graphs(inputs)).max() == 0  # replaying the graph is deterministic
    first = graphs(random_inputs(reference, 3, seed=10))
    kept = first.copy()
    graphs(random_inputs(reference, 3, seed=11))
    assert np.array_equal(first, kept)  # a result is the caller's: the next call's pinned copy does not touch it


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None, reason="TensorRT is not installed")
def test_tensorrt_plan_is_built_cached_and_matches(artifact: Path, tmp_path: Path) -> None:
    options = EngineOptions(device="cuda", precision="fp16", max_batch=4, cache_dir=tmp_path)
    engine = create_engine("tensorrt", artifact, options)
    assert not engine.describe()["plan_cached"] and len(list(tmp_path.glob("*.plan"))) == 1
    again = create_engine("tensorrt", artifact, options)
    assert again.describe()["plan_cached"]
    reference = create_engine("torch", artifact, EngineOptions(threads=1))
    for batch in (1, 3, 4):
        inputs = random_inputs(reference, batch, seed=batch)
        assert np.abs(engine(inputs) - reference(inputs)).max() < FP16_TOLERANCE
    eager = create_engine("tensorrt", artifact, replace(options, cuda_graphs=False))
    inputs = random_inputs(reference, 2, seed=9)
    assert np.abs(eager(inputs) - engine(inputs)).max() < 1e-3  # graphs change nothing but launch overhead


@pytest.mark.gpu
def test_onnxruntime_cuda_provider_matches(artifact: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build has no CUDA provider (install onnxruntime-gpu)")
    cuda = create_engine("onnxruntime", artifact, EngineOptions(device="cuda"))
    reference = create_engine("torch", artifact, EngineOptions(threads=1))
    inputs = random_inputs(reference, 3, seed=2)
    assert np.abs(cuda(inputs) - reference(inputs)).max() < 2e-3
