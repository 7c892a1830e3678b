"""How many live twins one engine sustains: N sessions ticking at 25 fps through the real render worker.

    PYTHONPATH=. python -m bench.sessions --sessions 1,8,24,40 [--seconds 6] [--device cuda] [--preset base]

Each simulated session is what ``TwinSession`` does to the render worker, minus compositing and encoding: on
every tick of its ``MediaClock`` (all on one frame grid, as in the server) it submits one frame with its own
random inputs and counts the frame *on time* when it comes back before the frame after it is due (the server
renders ``lead_frames`` ahead, so this is the strictest budget it ever has). Reported per N: the frames/s each
session received, the on-time share, the worker's mean batch and engine-call p50/p99. The model is a
randomly initialised run of the preset (speed does not depend on the values). Imports nothing of the WebRTC
stack, so it runs on a bare GPU machine.

    PYTHONPATH=. python -m bench.sessions --whole-server --sessions 8,24,40,48 [--viewers 1] [--seconds 15]

``--whole-server`` measures the real server instead: `twincast serve` with N speaking sessions, V WebRTC viewers
each, compositing and encoding included (``bench.whole_server``, which needs aiortc and PyAV; ``bash
bench/gpu_server.sh`` runs it on a GPU machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu import make_run
from engines.base import Engine, EngineOptions, create_engine
from engines.bench import random_inputs
from export.onnx_export import export_run
from stream.clock import MediaClock
from stream.render_worker import RenderedFrame, RenderJob, RenderWorker

FPS = 25


@dataclass
class SessionTally:
    """What one simulated session saw."""

    submitted: int = 0
    received: int = 0
    on_time: int = 0


def due_at(when: float) -> Callable[[np.ndarray], float]:
    """A job's ``paste_back``: the payload it hands back is the time its frame had to be back by."""
    return lambda face: when


async def run_sessions(engine: Engine, count: int, seconds: float, max_batch: int) -> dict[str, Any]:
    """``count`` sessions for ``seconds`` through one render worker; returns the row's figures."""
    loop = asyncio.get_running_loop()
    worker = RenderWorker({"twin": engine}, loop, max_batch=max_batch)
    for _ in range(count):
        worker.attach("twin")
    worker.start()
    grid = time.monotonic()
    tallies = [SessionTally() for _ in range(count)]
    inputs = [{name: array[0] for name, array in random_inputs(engine, 1, seed=i).items()} for i in range(count)]

    async def session(index: int) -> None:
        clock = MediaClock(FPS, grid=grid)
        tally = tallies[index]
        frame = 0
        end = clock.origin + seconds

        def deliver(rendered: RenderedFrame) -> None:
            tally.received += 1
            if time.monotonic() <= rendered.payload:  # the payload is the time the next frame is due
                tally.on_time += 1

        while clock.deadline(frame) < end:
            await clock.sleep_until(clock.deadline(frame))
            late_after = clock.deadline(frame + 1)
            worker.submit(RenderJob(session_id=str(index), frame_index=frame, generation=0, engine="twin",
                                    inputs=inputs[index], paste_back=due_at(late_after),
                                    deliver=deliver, is_current=lambda generation: True))
            frame += 1
            tally.submitted += 1

    started = time.monotonic()
    await asyncio.gather(*(session(i) for i in range(count)))
    await asyncio.sleep(0.5)  # the last frames come back
    elapsed = time.monotonic() - started
    worker.stop()
    calls = np.array(worker.render_ms)
    submitted = sum(t.submitted for t in tallies)
    received = sum(t.received for t in tallies)
    aggregate_fps = received / (elapsed - 0.5)
    return {
        "sessions": count,
        "fps_per_session": round(aggregate_fps / count, 2),
        "on_time": round(sum(t.on_time for t in tallies) / max(1, received), 4),
        "received_share": round(received / max(1, submitted), 4),
        "aggregate_fps": round(aggregate_fps, 1),
        "mean_batch": round(float(np.mean(worker.batch_sizes)), 2) if worker.batch_sizes else 0.0,
        "call_p50_ms": round(float(np.percentile(calls, 50)), 2) if calls.size else None,
        "call_p99_ms": round(float(np.percentile(calls, 99)), 2) if calls.size else None,
        "dropped": worker.dropped,
        "failures": worker.failures,
    }


def prepare_engine(preset_name: str, device: str, precision: str, max_batch: int, root: Path) -> Engine:
    """A random-weight run of the preset, exported, loaded into the torch engine, every batch size warmed."""
    run = make_run(root, 2, preset_name)
    exported = export_run(run, root / "art" / "twin.onnx", steps=2)
    name = "torch" if device == "cuda" else "onnxruntime"
    options = EngineOptions(device=device, precision=precision, cuda_graphs=device == "cuda", max_batch=max_batch)
    engine = create_engine(name, exported.onnx, options)
    for batch in range(1, max_batch + 1):  # capture every batch size's CUDA graph before timing
        engine(random_inputs(engine, batch))
    return engine


def whole_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``--whole-server`` (``bench.whole_server``)."""
    parser.add_argument("--whole-server", action="store_true",
                        help="measure `twincast serve` with viewers (bench.whole_server) instead of the worker alone")
    parser.add_argument("--viewers", type=int, default=1, help="whole server: WebRTC viewers per session")
    parser.add_argument("--settle-s", type=float, default=5.0, help="whole server: wait after each N before measuring")
    parser.add_argument("--frame", default="512x512", help="whole server: the synthetic pack's frame WIDTHxHEIGHT")
    parser.add_argument("--pack-seconds", type=float, default=4.0, help="whole server: the base loop's length")
    parser.add_argument("--encode", help="whole server: serve.encode (shared or per-viewer; default the server's)")
    parser.add_argument("--work", help="whole server: keep the exported model and pack here (reused when present)")
    parser.add_argument("--startup-s", type=float, default=600.0, help="whole server: how long the server may take "
                        "to start (engine warm-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="1,8,24,40")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="fp16")
    parser.add_argument("--max-batch", type=int, default=32)
    whole_server_arguments(parser)
    args = parser.parse_args()
    if args.whole_server:
        from bench import whole_server

        whole_server.run(args)
        return
    counts = [int(n) for n in args.sessions.split(",")]
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        engine = prepare_engine(args.preset, args.device, args.precision, args.max_batch, Path(scratch))
        print(json.dumps({"engine": engine.describe(), "prepare_s": round(time.perf_counter() - started, 1)}),
              flush=True)
        rows = []
        for count in counts:
            rows.append(asyncio.run(run_sessions(engine, count, args.seconds, args.max_batch)))
            print(json.dumps(rows[-1]), flush=True)
        engine.close()
    print(f"{'sessions':>8} {'fps each':>9} {'on time':>8} {'aggregate':>10} {'batch':>6} {'p50 ms':>7} "
          f"{'p99 ms':>7}")
    for row in rows:
        print(f"{row['sessions']:>8} {row['fps_per_session']:>9.2f} {row['on_time']:>8.1%} "
              f"{row['aggregate_fps']:>10.1f} {row['mean_batch']:>6.1f} {row['call_p50_ms'] or 0:>7.2f} "
              f"{row['call_p99_ms'] or 0:>7.2f}")
    out = os.environ.get("OUT")
    if out:
        report = {"args": vars(args), "rows": rows}
        Path(out, f"sessions_b{args.max_batch}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
