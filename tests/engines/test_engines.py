import json
from pathlib import Path

import numpy as np
import pytest

from engines import EngineOptions, create_engine
from engines.bench import random_inputs
from tests.helpers import run_cli
from twincast.errors import ArtifactMismatchError, InputError


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_engine_matches_torch_engine(artifact: Path, batch: int) -> None:
    reference = create_engine("torch", artifact, EngineOptions(threads=1))
    fast = create_engine("onnxruntime", artifact, EngineOptions(threads=1))
    inputs = random_inputs(fast, batch, seed=3)
    expected, actual = reference(inputs), fast(inputs)
    assert actual.shape == (batch, 3, 64, 64)
    np.testing.assert_allclose(actual, expected, atol=1e-4)  # fp32: tight
    assert np.abs(actual).max() <= 1.0
    reference.close()
    fast.close()


def test_engine_names_a_wrong_input(artifact: Path) -> None:
    engine = create_engine("onnxruntime", artifact)
    inputs = random_inputs(engine, 2)
    good_mel = inputs["mel"]
    inputs["mel"] = good_mel[:, :40]
    with pytest.raises(ArtifactMismatchError, match=r"'mel' has shape \(2, 40, 16\), expected \(2, 80, 16\)"):
        engine(inputs)
    inputs["mel"] = good_mel.astype(np.float64)
    with pytest.raises(ArtifactMismatchError, match="'mel' is float64, expected float32"):
        engine(inputs)
    inputs["mel"] = good_mel
    del inputs["noise"]
    with pytest.raises(ArtifactMismatchError, match="'noise' is missing"):
        engine(inputs)


def test_unknown_engine_is_named(artifact: Path) -> None:
    with pytest.raises(InputError, match="unknown engine 'warp'"):
        create_engine("warp", artifact)


def test_bench_cli_prints_rows_with_the_contract_fields(artifact: Path) -> None:
    result = run_cli("bench", "--model", str(artifact), "--engine", "all", "--batch", "1,2", "--seconds", "0.3",
                     "--json")
    rows = json.loads(result.stdout)
    assert {(row["engine"], row["batch"]) for row in rows} == {
        ("onnxruntime", 1), ("onnxruntime", 2), ("torch", 1), ("torch", 2)}
    for row in rows:
        assert {"engine", "steps", "batch", "fps", "p50_ms", "p99_ms", "vs_torch_eager"} <= set(row)
        assert row["fps"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0 and row["steps"] == 2
    assert all(row["vs_torch_eager"] == 1.0 for row in rows if row["engine"] == "torch")


def test_bench_cli_rejects_bad_batch(artifact: Path) -> None:
    result = run_cli("bench", "--model", str(artifact), "--batch", "one", check=False)
    assert result.returncode == 2 and "--batch 'one'" in result.stderr
