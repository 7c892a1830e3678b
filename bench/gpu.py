"""GPU benchmark of the ``base`` model: correctness of the fast paths against fp32, then frames/s and latency.

    bash bench/gpu.sh            (PYTHONPATH=. python -m bench.gpu [--batches 1,4,16,32] [--seconds 3])

Needs only PyTorch with CUDA, onnx and onnxruntime (TensorRT and onnxruntime-gpu are used when installed); it
imports nothing of the live stack (no aiortc, PyAV or mediapipe). The weights are random but every layer
carries signal (the zero-initialised residual branches are re-drawn), so the parity checks mean something;
speed does not depend on the values.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engines.base import Engine, EngineOptions, create_engine
from engines.bench import random_inputs, time_engine
from export.onnx_export import TOLERANCE, export_run
from model.checkpoint import save_checkpoint
from model.config import preset
from model.networks import TwinDenoiser
from twincast.errors import DependencyError


def make_run(root: Path, steps: int, preset_name: str = "base") -> Path:
    """A run of the preset (``base`` by default, 256² crop) with random weights in which every layer contributes."""
    chosen = preset(preset_name, crop_px=256 if preset_name == "base" else None, mask_top=0.55)
    model = replace(chosen.model, sample_steps=steps)
    torch.manual_seed(0)
    network = TwinDenoiser(model)
    with torch.no_grad():
        for parameter in network.parameters():
            if parameter.dim() > 1 and float(parameter.abs().max()) == 0.0:
                parameter.normal_(0.0, 0.02)
    pack = {"path": "synthetic", "source_sha256": "0" * 64, "crop_px": model.crop_px, "mask_top": 0.55, "fps": 25,
            "mel": {"sample_rate_hz": 16000, "fps": 25, "n_fft": 800, "hop": 200, "n_mels": 80, "window_frames": 16,
                    "fmin_hz": 55.0, "fmax_hz": 7600.0, "lookahead_ms": 20.0}}
    run = root / "run"
    save_checkpoint(run / "checkpoint.pt", model=model, train=chosen.train, state_dict=network.state_dict(), step=0,
                    pack=pack)
    return run


def variants(max_batch: int, cache: Path) -> list[tuple[str, str, EngineOptions]]:
    """(label, engine, options) for every path worth measuring here."""
    cuda = EngineOptions(device="cuda", max_batch=max_batch, cache_dir=cache)
    rows = [
        ("torch eager fp32", "torch", replace(cuda, precision="fp32", cuda_graphs=False)),
        ("torch graphs fp32", "torch", replace(cuda, precision="fp32", cuda_graphs=True)),
        ("torch eager fp16", "torch", replace(cuda, precision="fp16", cuda_graphs=False)),
        ("torch graphs fp16", "torch", replace(cuda, precision="fp16", cuda_graphs=True)),
        ("tensorrt fp16", "tensorrt", replace(cuda, precision="fp16", cuda_graphs=True)),
        ("tensorrt fp32", "tensorrt", replace(cuda, precision="fp32", cuda_graphs=True)),
        ("onnxruntime cuda", "onnxruntime", cuda),
    ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,4,16,32")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if not torch.cuda.is_available():
        raise SystemExit("bench.gpu needs a CUDA GPU")
    device = torch.cuda.get_device_name()
    report: dict[str, Any] = {"device": device, "torch": torch.__version__, "steps": args.steps,
                              "date": time.strftime("%Y-%m-%d"), "host": platform.node(), "checks": [], "rows": []}
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        run = make_run(root, args.steps)
        started = time.perf_counter()
        exported = export_run(run, root / "art" / "twin.onnx", steps=args.steps)
        report["export_s"] = round(time.perf_counter() - started, 1)
        report["onnx_cpu_parity"] = exported.max_abs_error
        reference = create_engine("torch", exported.onnx, EngineOptions(device="cuda", cuda_graphs=False))
        probe = random_inputs(reference, 4, seed=1)
        expected = reference(probe)
        reference.close()
        for label, name, options in variants(max(batches), root / "plans"):
            try:
                engine = create_engine(name, exported.onnx, options)
            except DependencyError as exc:
                report["checks"].append({"variant": label, "skipped": str(exc)})
                continue
            try:
                measure_variant(report, label, engine, options.precision, probe, expected, batches, args.seconds)
            except Exception as exc:  # noqa: BLE001 - one broken path must not hide the others' figures
                report["checks"].append({"variant": label, "skipped": f"failed: {type(exc).__name__}: {exc}"})
            finally:
                engine.close()
                torch.cuda.empty_cache()
    eager = {row["batch"]: row["fps"] for row in report["rows"] if row["variant"] == "torch eager fp32"}
    for row in report["rows"]:
        row["vs_torch_eager"] = round(row["fps"] / eager[row["batch"]], 2) if row["batch"] in eager else None
    print_table(report)
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_bench.json").write_text(json.dumps(report, indent=1))


def measure_variant(report: dict[str, Any], label: str, engine: Engine, precision: str,
                    probe: dict[str, np.ndarray], expected: np.ndarray, batches: list[int], seconds: float) -> None:
    """Parity against the fp32 reference, then frames/s and latency at each batch size, into ``report``."""
    error = float(np.abs(engine(probe) - expected).max())
    tolerance = TOLERANCE[precision]
    report["checks"].append({"variant": label, "max_abs_error": error, "tolerance": tolerance,
                             "ok": error <= tolerance})
    for batch in batches:
        latencies, warmup_s = time_engine(engine, batch, seconds)
        p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
        report["rows"].append({"variant": label, "batch": batch, "fps": round(batch / float(np.mean(latencies)), 1),
                               "p50_ms": round(1000 * p50, 2), "p99_ms": round(1000 * p99, 2),
                               "warmup_s": round(warmup_s, 2), "memory_mb": engine.memory_mb()})


def print_table(report: dict[str, Any]) -> None:
    print(f"# {report['device']} · torch {report['torch']} · base model · {report['steps']} steps")
    for check in report["checks"]:
        if "skipped" in check:
            print(f"  {check['variant']:<20} skipped: {check['skipped'][:90]}")
        else:
            verdict = "ok" if check["ok"] else "FAIL"
            print(f"  {check['variant']:<20} max|Δ| vs fp32 {check['max_abs_error']:.2e} "
                  f"(tol {check['tolerance']:.0e}) {verdict}")
    print(f"{'variant':<20} {'batch':>5} {'fps':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs eager':>8} {'MB':>7}")
    for row in report["rows"]:
        memory = f"{row['memory_mb']:.0f}" if row["memory_mb"] else "-"
        print(f"{row['variant']:<20} {row['batch']:>5} {row['fps']:>9.1f} {row['p50_ms']:>8.2f} "
              f"{row['p99_ms']:>8.2f} {row['vs_torch_eager'] or 0:>7.2f}× {memory:>7}")


if __name__ == "__main__":
    main()
