"""The artifact sidecar ``twin.json``: what the graph takes and returns, and what it was built from.

Engines refuse an artifact whose files do not match their recorded hashes, or whose inputs disagree with
the sidecar.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from twincast.errors import ArtifactMismatchError, InputError, NotFoundError
from twincast.files import atomic_write_bytes, sha256_file

SPEC_VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: its name, shape (``"batch"`` for the batch axis) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str


@dataclass(frozen=True)
class TwinSpec:
    """The contents of ``twin.json``."""

    spec_version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    steps: int
    crop_px: int
    mask_top: float
    fps: int
    precision: str
    opset: int
    onnx_file: str
    onnx_sha256: str
    weights_file: str
    weights_sha256: str
    model: dict[str, Any]
    mel: dict[str, Any]
    parity: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def input(self, name: str) -> TensorSpec:
        """The input called ``name``."""
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def to_json(self) -> str:
        """Serialise for ``twin.json``."""
        return json.dumps(asdict(self), indent=1)

    def save(self, path: Path) -> None:
        """Write atomically."""
        atomic_write_bytes(path, self.to_json().encode())


def sidecar_path(onnx_path: Path) -> Path:
    """``twin.onnx`` → ``twin.json``."""
    return onnx_path.with_suffix(".json")


def resolve_artifact(path: Path) -> Path:
    """Accept ``twin.onnx``, its sidecar, or a directory holding ``twin.onnx``; return the ONNX path.

    Raises:
        NotFoundError: no artifact there.
    """
    if path.is_dir():
        path = path / "twin.onnx"
    if path.suffix == ".json":
        path = path.with_suffix(".onnx")
    if not path.is_file():
        raise NotFoundError(f"no model artifact at {path}; expected twin.onnx written by `twincast export`")
    return path


def load_spec(onnx_path: Path, *, verify_hashes: bool = True) -> TwinSpec:
    """Read and check the sidecar of ``onnx_path``.

    Raises:
        NotFoundError: the sidecar is missing.
        InputError: the sidecar is unreadable or of another version.
        ArtifactMismatchError: a file's hash differs from the sidecar's record.
    """
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise NotFoundError(f"{onnx_path} has no sidecar {path.name}; re-run `twincast export`")
    try:
        raw = json.loads(path.read_text())
        if raw.get("spec_version") != SPEC_VERSION:
            raise InputError(f"{path} has spec_version {raw.get('spec_version')!r}; expected {SPEC_VERSION}")
        raw["inputs"] = tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in raw["inputs"])
        raw["outputs"] = tuple(TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in raw["outputs"])
        spec = TwinSpec(**raw)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise InputError(f"{path} is not a valid twin.json sidecar: {exc}") from exc
    if verify_hashes:
        for name, want in ((spec.onnx_file, spec.onnx_sha256), (spec.weights_file, spec.weights_sha256)):
            file = onnx_path.parent / name
            if not file.is_file():
                raise NotFoundError(f"artifact file {file} named by {path.name} is missing")
            have = sha256_file(file)
            if have != want:
                raise ArtifactMismatchError(
                    f"{file.name} does not match its sidecar {path.name}: sha256 {have[:12]}… but the sidecar "
                    f"records {want[:12]}…; re-run `twincast export` so the two are written together"
                )
    return spec
