"""Engine benchmarks: frames/s and per-call latency for each engine and batch size, measured in one run."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine, EngineOptions, create_engine


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
    vs_torch_eager: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return asdict(self)


def random_inputs(engine: Engine, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the engine's shapes (images in [-1, 1], mel around silence level)."""
    rng = np.random.default_rng(seed)
    inputs = engine.zero_inputs(batch)
    for name, array in inputs.items():
        inputs[name] = rng.uniform(-1, 1, array.shape).astype(array.dtype)
    return inputs


def time_engine(engine: Engine, batch: int, seconds: float, min_calls: int = 10) -> tuple[list[float], float]:
    """Warm up, then call the engine repeatedly for ``seconds``; returns call latencies (s) and warm-up (s)."""
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
              options: EngineOptions | None = None) -> list[BenchRow]:
    """Benchmark each engine at each batch size; ``vs_torch_eager`` is filled where a torch row exists."""
    rows: list[BenchRow] = []
    for name in engines:
        engine = create_engine(name, artifact, options)
        try:
            for batch in batches:
                latencies, warmup_s = time_engine(engine, batch, seconds)
                p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
                rows.append(BenchRow(engine=engine.name, steps=engine.spec.steps, batch=batch,
                                     fps=round(batch / float(np.mean(latencies)), 2), p50_ms=round(1000 * p50, 3),
                                     p99_ms=round(1000 * p99, 3), warmup_ms=round(1000 * warmup_s, 1),
                                     calls=len(latencies), threads=engine.options.thread_count))
        finally:
            engine.close()
    eager = {row.batch: row.fps for row in rows if row.engine == "torch"}
    return [BenchRow(**{**asdict(row), "vs_torch_eager": round(row.fps / eager[row.batch], 3)})
            if row.batch in eager else row for row in rows]
