"""The ``Engine`` contract and the backend registry.

An engine is built from an artifact (``twin.onnx`` + ``twin.json``), warmed up once (buffers allocated then),
called with one batch of frames from any number of sessions, and closed. Backends are registered by import path
and imported only when chosen, so the package imports on a machine without them.
"""

from __future__ import annotations

import importlib
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from export.spec import TwinSpec, load_spec, resolve_artifact
from twincast.errors import ArtifactMismatchError, DependencyError, InputError

# name → "module:Class"; imported lazily by create_engine.
ENGINES: dict[str, str] = {
    "onnxruntime": "engines.onnxruntime_engine:OnnxRuntimeEngine",
    "torch": "engines.torch_engine:TorchEngine",
}


@dataclass(frozen=True)
class EngineOptions:
    """How an engine should run."""

    threads: int = 0  # CPU threads for the engine's own pool; 0 = all cores
    device: str = "cpu"
    spin: bool = True  # let CPU worker threads busy-wait between ops (fastest alone, wasteful beside others)

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise InputError(f"engine threads {self.threads} must be ≥ 0")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"engine device {self.device!r} must be 'cpu' or 'cuda'")

    @property
    def thread_count(self) -> int:
        """Threads to use, resolving 0 to the core count."""
        return self.threads or os.cpu_count() or 1


class Engine(ABC):
    """One compiled renderer: ``warmup()``, then ``engine(inputs) → faces`` per batch, then ``close()``.

    Inputs are float32 arrays keyed by the sidecar's input names, all with the same leading batch size;
    the result is (B, 3, crop, crop) float32 in [-1, 1].
    """

    name: ClassVar[str]

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        self.onnx_path = onnx_path
        self.spec = spec
        self.options = options

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Render one validated batch."""

    def warmup(self, max_batch: int = 1) -> float:
        """Run every batch size up to ``max_batch`` once (allocating buffers); returns seconds taken."""
        started = time.perf_counter()
        for batch in sorted({1, max_batch}):
            self.run(self.zero_inputs(batch))
        return time.perf_counter() - started

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return self.run(inputs)

    def close(self) -> None:  # noqa: B027 - backends without resources need not override it
        """Release the engine's resources."""

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> int:
        """Check names, dtypes and shapes against the sidecar; return the batch size.

        Raises:
            ArtifactMismatchError: an input is missing or has the wrong shape or dtype.
        """
        batch: int | None = None
        for tensor in self.spec.inputs:
            if tensor.name not in inputs:
                raise ArtifactMismatchError(f"engine input {tensor.name!r} is missing; expected {self.input_names}")
            array = inputs[tensor.name]
            if array.dtype != np.dtype(tensor.dtype):
                raise ArtifactMismatchError(f"engine input {tensor.name!r} is {array.dtype}, expected {tensor.dtype}")
            batch = array.shape[0] if batch is None else batch
            want = tuple(batch if dim == "batch" else dim for dim in tensor.shape)
            if tuple(array.shape) != want:
                raise ArtifactMismatchError(
                    f"engine input {tensor.name!r} has shape {tuple(array.shape)}, expected {want}"
                )
        return batch or 0

    @property
    def input_names(self) -> list[str]:
        """The sidecar's input names, in order."""
        return [tensor.name for tensor in self.spec.inputs]

    def zero_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """A batch of zeros shaped like the inputs (for warm-up and benchmarks)."""
        return {
            tensor.name: np.zeros(tuple(batch if d == "batch" else int(d) for d in tensor.shape), tensor.dtype)
            for tensor in self.spec.inputs
        }

    def describe(self) -> dict[str, Any]:
        """What this engine is, for logs, stats and the dashboard."""
        return {"engine": self.name, "steps": self.spec.steps, "crop_px": self.spec.crop_px,
                "precision": self.spec.precision, "threads": self.options.thread_count, "device": self.options.device}


def engine_names() -> list[str]:
    """Registered backend names."""
    return sorted(ENGINES)


def _engine_class(name: str) -> type[Engine]:
    module_name, class_name = ENGINES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DependencyError(f"engine {name!r} is unavailable here: {exc}") from exc
    engine_class: type[Engine] = getattr(module, class_name)
    return engine_class


def choose_auto(options: EngineOptions) -> tuple[str, str]:
    """Pick the best engine available for ``options``; returns (name, why)."""
    if options.device == "cpu":
        return "onnxruntime", "on CPU, ONNX Runtime runs these graphs 2-4× faster than PyTorch eager"
    return "torch", "on CUDA, PyTorch is the engine available in this build"


def create_engine(name: str, artifact: Path, options: EngineOptions | None = None) -> Engine:
    """Build a registered engine (or ``auto``) over the artifact at ``artifact``.

    Raises:
        InputError: unknown engine name.
        NotFoundError, ArtifactMismatchError: the artifact is missing or does not match its sidecar.
        DependencyError: the backend's library is not installed.
    """
    options = options or EngineOptions()
    if name == "auto":
        name, _ = choose_auto(options)
    if name not in ENGINES:
        raise InputError(f"unknown engine {name!r}; expected 'auto' or one of {engine_names()}")
    onnx_path = resolve_artifact(artifact)
    spec = load_spec(onnx_path)
    return _engine_class(name)(onnx_path, spec, options)
