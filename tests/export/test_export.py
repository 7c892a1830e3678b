import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.spec import load_spec
from model.checkpoint import load_checkpoint
from model.render_inputs import INPUT_NAMES
from model.renderer import TwinRenderer
from tests.helpers import run_cli
from twincast.errors import ArtifactMismatchError


def test_artifact_graph_and_sidecar(artifact: Path) -> None:
    graph = onnx.load(str(artifact))
    onnx.checker.check_model(graph)
    assert graph.opset_import[0].version >= 17
    assert [node.name for node in graph.graph.input] == list(INPUT_NAMES)
    spec = load_spec(artifact)
    assert spec.steps == 2 and spec.crop_px == 64 and spec.fps == 25
    assert spec.input("mel").shape == ("batch", 80, 16)
    assert spec.parity["max_abs_error"] < 1e-3
    assert spec.model["preset"] == "tiny"


def test_onnxruntime_matches_pytorch_on_pack_inputs(artifact: Path, run_dir: Path, pack: Path) -> None:
    import onnxruntime as ort

    from avatar.pack import AvatarPack
    from stream.assets import crops_to_model

    loaded = AvatarPack.load(pack)
    crops = crops_to_model(np.asarray(loaded.array("crops")[:3]))
    inputs = {
        "masked_crop": crops,
        "reference": np.repeat(crops[:1], 3, axis=0),
        "mel": np.asarray(loaded.array("mel")[:3], np.float32),
        "noise": np.random.default_rng(0).standard_normal(crops.shape).astype(np.float32),
    }
    renderer = TwinRenderer(load_checkpoint(run_dir).build(), steps=2).eval()
    with torch.inference_mode():
        expected = renderer(*(torch.from_numpy(inputs[name]) for name in INPUT_NAMES)).numpy()
    session = ort.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, inputs)
    assert actual.shape == (3, 3, 64, 64)
    np.testing.assert_allclose(actual, expected, atol=1e-4)


def test_tampered_onnx_is_refused(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "art"
    shutil.copytree(artifact.parent, copy)
    with (copy / "twin.onnx").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactMismatchError, match="does not match its sidecar"):
        load_spec(copy / "twin.onnx")


def test_export_steps_flag_changes_the_graph(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "one" / "twin.onnx"
    result = run_cli("export", str(run_dir), "--out", str(out), "--steps", "1")
    assert json.loads(result.stdout)["max_abs_error"] < 1e-3
    assert load_spec(out).steps == 1


def test_export_refuses_a_non_onnx_path_and_leaves_nothing(run_dir: Path, tmp_path: Path) -> None:
    result = run_cli("export", str(run_dir), "--out", str(tmp_path / "twin.bin"), check=False)
    assert result.returncode == 2 and "must end in .onnx" in result.stderr
    assert list(tmp_path.iterdir()) == []
