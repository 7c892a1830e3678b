"""Engine benchmarks: frames/s and per-call latency for each engine and batch size, measured in one run."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine, EngineOptions, create_engine
from twincast.errors import DependencyError


@dataclass(frozen=True)
class BenchRow:
    """One measured configuration."""

    engine: str
    steps: int
    batch: int
    fps: float
    p50_ms: float
    p99_ms: float
    warmup_ms: float
    calls: int
    threads: int
    precision: str = "fp32"
    device: str = "cpu"
    memory_mb: float | None = None  # device memory (CUDA) or peak resident memory of this process (CPU)
    cuda_graphs: bool = False
    vs_torch_eager: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return asdict(self)


def is_eager_fp32(options: EngineOptions) -> bool:
    """Whether the torch engine with ``options`` is the eager fp32 reference (graphs only exist on CUDA)."""
    return options.precision == "fp32" and (options.device == "cpu" or not options.cuda_graphs)


def random_inputs(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the engine's shapes (images in [-1, 1], mel around silence level)."""
    rng = np.random.default_rng(seed)
    inputs = engine.zero_inputs(batch)
    for name, array in inputs.items():
        inputs[name] = rng.uniform(-1, 1, array.shape).astype(array.dtype)
    return inputs


def time_engine(engine: Engine, batch: int, seconds: float, min_calls: int = 10) -> tuple[list[float], float]:
    """Warm up, then call the engine repeatedly for ``seconds``; returns call latencies (s) and warm-up (s).

    On CUDA the device's peak-memory counter starts afresh, so ``memory_mb`` afterwards is this measurement's.
    """
    if engine.options.device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
    warmup_s = engine.warmup(batch)
    inputs = random_inputs(engine, batch)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < min_calls:
        started = time.perf_counter()
        engine(inputs)
        latencies.append(time.perf_counter() - started)
    return latencies, warmup_s


def run_bench(artifact: Path, engines: list[str], batches: list[int], *, seconds: float = 3.0,
              options: EngineOptions | None = None, skipped: dict[str, str] | None = None) -> list[BenchRow]:
    """Benchmark each engine at each batch size, plus PyTorch eager fp32 on the same device as the baseline
    that ``vs_torch_eager`` divides by (measured in this same run). Engines that cannot start here are left out
    and named in ``skipped`` when a dict is given (otherwise their error is raised)."""
    options = options or EngineOptions()
    eager_options = replace(options, precision="fp32", cuda_graphs=False)
    plan = [(name, options) for name in engines]
    if not any(name == "torch" and is_eager_fp32(opts) for name, opts in plan):
        plan.insert(0, ("torch", eager_options))
    rows: list[BenchRow] = []
    for name, engine_options in plan:
        try:
            engine = create_engine(name, artifact, engine_options)
        except DependencyError as exc:
            if skipped is None:
                raise
            skipped[name] = str(exc)
            continue
        try:
            for batch in batches:
                latencies, warmup_s = time_engine(engine, batch, seconds)
                p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
                memory = engine.memory_mb()
                if memory is None:
                    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                described = engine.describe()
                precision = described["precision"]
                rows.append(BenchRow(engine=engine.name, steps=engine.spec.steps, batch=batch,
                                     fps=round(batch / float(np.mean(latencies)), 2), p50_ms=round(1000 * p50, 3),
                                     p99_ms=round(1000 * p99, 3), warmup_ms=round(1000 * warmup_s, 1),
                                     calls=len(latencies), threads=engine.options.thread_count,
                                     precision=precision, device=engine.options.device,
                                     memory_mb=round(memory, 1), cuda_graphs=bool(described.get("cuda_graphs"))))
        finally:
            engine.close()
    eager = {row.batch: row.fps for row in rows
             if row.engine == "torch" and row.precision == "fp32" and not row.cuda_graphs}
    return [BenchRow(**{**asdict(row), "vs_torch_eager": round(row.fps / eager[row.batch], 3)})
            if row.batch in eager else row for row in rows]
