"""The ``Engine`` contract, the backend registry and ``auto`` selection.

An engine is built from an artifact (``twin.onnx`` + ``twin.json``), warmed up once (buffers allocated then),
called with one batch of frames from any number of sessions, and closed. Backends are registered by import path
and imported only when chosen, so the package imports on a machine without them.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, NotRequired, TypedDict

import numpy as np

from export.spec import TwinSpec, load_spec, resolve_artifact
from twincast.errors import ArtifactMismatchError, DependencyError, InputError, TwincastError

log = logging.getLogger(__name__)

# name → "module:Class"; imported lazily by create_engine.
ENGINES: dict[str, str] = {
    "onnxruntime": "engines.onnxruntime_engine:OnnxRuntimeEngine",
    "torch": "engines.torch_engine:TorchEngine",
    "tensorrt": "engines.tensorrt_engine:TensorRTEngine",
}
PRECISIONS = ("fp32", "fp16")


class EngineInfo(TypedDict):
    """What an engine is (``Engine.describe``): backend, sampler steps, crop, precision, threads, device, why it
    was chosen and what it fell back from; each backend adds its own details."""

    engine: str
    steps: int
    crop_px: int
    precision: str
    threads: int
    device: str
    chosen_because: str | None
    fallback: str | None
    providers: NotRequired[list[str]]  # ONNX Runtime's execution providers, in order
    cuda_graphs: NotRequired[bool]  # PyTorch: whether calls replay captured CUDA graphs
    plan: NotRequired[str]  # TensorRT: the plan file's name …
    plan_cached: NotRequired[bool]  # … and whether it came from the cache


@dataclass(frozen=True)
class EngineOptions:
    """How an engine should run."""

    threads: int = 0  # CPU threads for the engine's own pool; 0 = all cores
    device: str = "cpu"  # "cpu" or "cuda"
    spin: bool = True  # let CPU worker threads busy-wait between ops (fastest alone, wasteful beside others)
    precision: str = "fp32"  # compute precision where the engine chooses it (PyTorch on CUDA, TensorRT builds)
    cuda_graphs: bool = True  # capture one CUDA graph per batch size (PyTorch, TensorRT)
    max_batch: int = 32  # largest batch the engine prepares for (TensorRT profile, graph captures)
    cache_dir: Path | None = None  # where TensorRT plans are kept
    fallback: bool = False  # `auto` may fall back to the next engine when the best one fails to start

    def __post_init__(self) -> None:
        if self.threads < 0:
            raise InputError(f"engine threads {self.threads} must be ≥ 0")
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"engine device {self.device!r} must be 'cpu' or 'cuda'")
        if self.precision not in PRECISIONS:
            raise InputError(f"engine precision {self.precision!r} must be one of {PRECISIONS}")
        if not 1 <= self.max_batch <= 1024:
            raise InputError(f"engine max_batch {self.max_batch} must be in 1..1024")

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
        self.fallback_reason: str | None = None  # set when `auto` had to fall back to this engine
        self.chosen_because: str | None = None

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Render one validated batch."""

    def warmup(self, max_batch: int = 1) -> float:
        """Run every batch size from 1 to ``max_batch`` once, so buffers are allocated and CUDA graphs captured
        before the first live call of that size (the render worker's batch is however many sessions ticked
        together); returns seconds taken."""
        started = time.perf_counter()
        for batch in range(1, max_batch + 1):
            self.run(self.zero_inputs(batch))
        return time.perf_counter() - started

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return self.run(inputs)

    def close(self) -> None:  # noqa: B027 - backends without resources need not override it
        """Release the engine's resources."""

    def memory_mb(self) -> float | None:
        """Device memory the engine holds (CUDA engines), or None on CPU."""
        return None

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

    def input_shape(self, name: str, batch: int) -> tuple[int, ...]:
        """The concrete shape of input ``name`` at ``batch``."""
        return tuple(batch if d == "batch" else int(d) for d in self.spec.input(name).shape)

    def zero_inputs(self, batch: int) -> dict[str, np.ndarray]:
        """A batch of zeros shaped like the inputs (for warm-up and benchmarks)."""
        return {tensor.name: np.zeros(self.input_shape(tensor.name, batch), tensor.dtype)
                for tensor in self.spec.inputs}

    def describe(self) -> EngineInfo:
        """What this engine is, for logs, stats and the dashboard."""
        return {"engine": self.name, "steps": self.spec.steps, "crop_px": self.spec.crop_px,
                "precision": self.options.precision,
                "threads": self.options.thread_count, "device": self.options.device,
                "chosen_because": self.chosen_because, "fallback": self.fallback_reason}


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


def cuda_available() -> bool:
    """Whether PyTorch sees a CUDA device (imports torch only when asked)."""
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def auto_candidates(options: EngineOptions) -> list[tuple[str, EngineOptions, str]]:
    """The engines ``auto`` may use here, best first: (name, options, why)."""
    candidates: list[tuple[str, EngineOptions, str]] = []
    if cuda_available():
        cuda = replace(options, device="cuda")
        if importlib.util.find_spec("tensorrt") is not None:
            candidates.append(("tensorrt", replace(cuda, precision="fp16"),
                               "TensorRT is installed and a CUDA GPU is present: compiled fp16 plans run fastest"))
        if importlib.util.find_spec("onnxruntime") is not None:
            import onnxruntime as ort

            if "CUDAExecutionProvider" in ort.get_available_providers():
                candidates.append(("onnxruntime", cuda, "ONNX Runtime's CUDA provider is installed (no TensorRT)"))
        candidates.append(("torch", replace(cuda, precision="fp16"),
                           "a CUDA GPU without TensorRT: PyTorch fp16 with CUDA graphs"))
    candidates.append(("onnxruntime", replace(options, device="cpu"),
                       "on CPU, ONNX Runtime runs these graphs about 2× faster than PyTorch eager"))
    candidates.append(("torch", replace(options, device="cpu"), "PyTorch eager on CPU, the reference"))
    return candidates


def choose_auto(options: EngineOptions) -> tuple[str, str]:
    """The engine ``auto`` picks first here, and why."""
    name, _, why = auto_candidates(options)[0]
    return name, why


def create_engine(name: str, artifact: Path, options: EngineOptions | None = None) -> Engine:
    """Build a registered engine (or ``auto``) over the artifact at ``artifact``.

    ``auto`` takes the best engine available; if it fails to start and ``options.fallback`` is set, the next
    one is tried with a WARNING, and the engine reports the fallback in ``describe()``.

    Raises:
        InputError: unknown engine name.
        NotFoundError, ArtifactMismatchError: the artifact is missing or does not match its sidecar.
        DependencyError: the backend's library is not installed.
    """
    options = options or EngineOptions()
    onnx_path = resolve_artifact(artifact)
    spec = load_spec(onnx_path)
    if name != "auto":
        if name not in ENGINES:
            raise InputError(f"unknown engine {name!r}; expected 'auto' or one of {engine_names()}")
        return _engine_class(name)(onnx_path, spec, options)
    failures: list[str] = []
    for candidate, candidate_options, why in auto_candidates(options):
        try:
            engine = _engine_class(candidate)(onnx_path, spec, candidate_options)
        except (TwincastError, RuntimeError, OSError) as exc:
            failures.append(f"{candidate} ({candidate_options.device}): {exc}")
            if not options.fallback:
                raise
            log.warning("engine %s failed to start (%s); falling back", candidate, exc)
            continue
        engine.chosen_because = why
        if failures:
            engine.fallback_reason = "; ".join(failures)
            log.warning("engine auto fell back to %s after: %s", candidate, engine.fallback_reason)
        else:
            log.info("engine auto → %s: %s", candidate, why)
        return engine
    raise DependencyError("no engine could start: " + "; ".join(failures))
