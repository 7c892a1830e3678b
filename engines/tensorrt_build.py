"""Building TensorRT plans from ``twin.onnx`` with the TensorRT Python API, cached per GPU and precision.

A plan only runs on the TensorRT version and GPU architecture that built it, for the shapes its optimisation
profile covers; the cache key holds all of that, so a plan is never reused where it would not load. Plans are
written to a temporary file and renamed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from export.spec import TwinSpec, load_spec, resolve_artifact
from twincast.errors import DependencyError, InputError
from twincast.files import atomic_write_bytes

log = logging.getLogger(__name__)
WORKSPACE_BYTES = 4 << 30


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes a plan is optimised for: it runs any batch from ``min`` to ``max``."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max <= 1024:
            raise InputError(f"batch profile {self.min}/{self.opt}/{self.max} must satisfy 1 ≤ min ≤ opt ≤ max ≤ 1024")


@dataclass(frozen=True)
class PlanResult:
    """A built (or found) plan."""

    plan: Path
    key: str
    cached: bool
    seconds: float


def plan_key(*, onnx_sha256: str, tensorrt_version: str, compute_capability: tuple[int, int], precision: str,
             profile: BatchProfile, input_shapes: dict[str, tuple[int | str, ...]]) -> str:
    """The cache key of a plan: changes whenever the graph, TensorRT, the GPU architecture, the precision or the
    shapes change."""
    parts = {"onnx": onnx_sha256, "tensorrt": tensorrt_version, "sm": list(compute_capability),
             "precision": precision, "batch": [profile.min, profile.opt, profile.max],
             "shapes": {name: list(shape) for name, shape in sorted(input_shapes.items())}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def require_tensorrt() -> Any:
    """Import TensorRT and check for a CUDA device.

    Raises:
        DependencyError: TensorRT or CUDA is missing, with how to get them.
    """
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise DependencyError(
            "TensorRT is not installed here: on a machine with an NVIDIA GPU install the [gpu] extra "
            "(pip install 'twincast[gpu]') or use the TensorRT container of docker-compose.yml"
        ) from exc
    import torch

    if not torch.cuda.is_available():
        raise DependencyError(
            "TensorRT needs a CUDA GPU and none is visible (check the driver and CUDA_VISIBLE_DEVICES)")
    return trt


def build_plan(artifact: Path, *, precision: str = "fp16", profile: BatchProfile | None = None,
               cache_dir: Path, timing_cache: Path | None = None, force: bool = False) -> PlanResult:
    """Build (or find in ``cache_dir``) the TensorRT plan of an artifact.

    Args:
        artifact: ``twin.onnx`` (its sidecar is checked first).
        precision: ``fp32`` or ``fp16`` (FP16 kernels allowed where TensorRT finds them faster).
        profile: batch sizes to optimise for.
        cache_dir: where plans live, named by ``plan_key``.
        timing_cache: a development-only file of kernel timings that makes rebuilds fast; never ship it.
        force: rebuild even when the plan is cached.

    Raises:
        DependencyError: no TensorRT or no CUDA.
        InputError: TensorRT cannot parse the graph, or the build fails.
    """
    trt = require_tensorrt()
    import torch

    onnx_path = resolve_artifact(artifact)
    spec = load_spec(onnx_path)
    profile = profile or BatchProfile()
    key = plan_key(onnx_sha256=spec.onnx_sha256, tensorrt_version=trt.__version__,
                   compute_capability=torch.cuda.get_device_capability(), precision=precision, profile=profile,
                   input_shapes={tensor.name: tensor.shape for tensor in spec.inputs})
    plan_path = cache_dir / f"{key}.plan"
    if plan_path.is_file() and not force:
        return PlanResult(plan_path, key, cached=True, seconds=0.0)
    started = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(index)) for index in range(parser.num_errors))
        raise InputError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    optimisation = builder.create_optimization_profile()
    for tensor in spec.inputs:
        dims = [int(d) for d in tensor.shape[1:]]
        optimisation.set_shape(tensor.name, (profile.min, *dims), (profile.opt, *dims), (profile.max, *dims))
    config.add_optimization_profile(optimisation)
    cache = None
    if timing_cache is not None:
        cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise InputError(f"TensorRT failed to build a plan for {onnx_path.name} (see the log above)")
    atomic_write_bytes(plan_path, bytes(serialized))
    if cache is not None and timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(cache.serialize()))
    seconds = time.perf_counter() - started
    log.info("built TensorRT plan %s (%s, batch %d..%d) in %.1f s", plan_path.name, precision, profile.min,
             profile.max, seconds)
    return PlanResult(plan_path, key, cached=False, seconds=seconds)


def default_plan_dir(spec: TwinSpec, onnx_path: Path) -> Path:
    """Plans next to the artifact, in ``plans/``."""
    del spec
    return onnx_path.parent / "plans"
