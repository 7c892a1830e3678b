"""Time to twin: footage of a new person to a live twin, measured two ways.

    .venv/bin/python -m bench.time_to_twin create [--size demo] [--budget 15m] [--out bench/results/x.json]
    .venv/bin/python -m bench.time_to_twin live [--size demo] [--budget 5m] [--out bench/results/y.json]

``create``: ``twincast create`` on 45 s of synthetic footage of a person the demo was never trained on (the
portrait ``assets/portrait-hopper.jpg`` with espeak-ng speech, made once into ``--cache``), with ``--json``;
records the plan and its estimate, when each stage started and ended, the wall time in all and the live variant's
eval figures.

``live``: ``twincast demo`` serving with one WHEP viewer pulling the stream the whole time, while the same footage
is uploaded to ``POST /api/twins`` and trained by the server's job worker; samples the live session's stats once a
second (rendered fps, late and repeated frames) and what the viewer received, then puts the new twin live. It
reports the live fps during training (mean, lowest 10 s window) against the same figures before the job started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from avatar.synth import DEFAULT_TEXT, SynthConfig, synth_footage
from model.schedule import parse_duration
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import ServerProcess

PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portrait-hopper.jpg"
WINDOW_S = 10.0


def footage(cache: Path) -> Path:
    """The new person's 45 s clip at 384² (made once into ``cache``)."""
    clip = cache / "hopper-384.mp4"
    if not clip.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        synth_footage(PORTRAIT, DEFAULT_TEXT, clip, SynthConfig(size_px=384, seed=7), progress=False)
    return clip


def machine() -> dict[str, Any]:
    """What this ran on."""
    return {"cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "load_1min_at_start": os.getloadavg()[0]}


def run_create(clip: Path, out: Path, size: str, budget: str) -> dict[str, Any]:
    """``twincast create`` with JSON progress; the timeline of its stages and its result."""
    started = time.monotonic()
    argv = [sys.executable, "-m", "twincast.cli", "create", str(clip), "--name", "hopper", "--out", str(out),
            "--size", size, "--budget", budget, "--json", "--force"]
    stages: list[dict[str, Any]] = []
    plan: dict[str, Any] | None = None
    done: dict[str, Any] | None = None
    loads: list[float] = []
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            at = round(time.monotonic() - started, 1)
            if event["type"] == "plan":
                plan = event["plan"]
                print(event["text"], flush=True)
            elif event["type"] == "stage":
                if stages:
                    stages[-1]["ended_s"] = at
                stages.append({"stage": event["stage"], "started_s": at})
                loads.append(os.getloadavg()[0])
                print(f"{at:7.1f} s  {event['text']}", flush=True)
            elif event["type"] == "done":
                done = event
            elif event["type"] == "error":
                raise SystemExit(f"create failed: {event}")
    if process.returncode != 0 or done is None:
        raise SystemExit(f"create exited with status {process.returncode}")
    wall = time.monotonic() - started
    if stages:
        stages[-1]["ended_s"] = round(wall, 1)
    print(done["text"], flush=True)
    return {"wall_s": round(wall, 1), "estimate_s": done["estimate_s"], "stages": stages, "plan": plan,
            "live_variant": done["live_variant"], "figures": done["figures"],
            "load_1min_at_stage_starts": [round(value, 2) for value in loads]}


class Viewer:
    """A WHEP viewer pulling the stream in a thread of its own until ``stop``."""

    def __init__(self, url: str) -> None:
        self._stop = threading.Event()
        self.media: ReceivedMedia | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        async def until_stopped() -> None:
            await asyncio.get_running_loop().run_in_executor(None, self._stop.wait)

        self.media = asyncio.run(pull(url, 0.5, during=until_stopped, keep_video=0))

    def stop(self) -> ReceivedMedia:
        self._stop.set()
        self._thread.join(timeout=60)
        assert self.media is not None, "the viewer ended without media"
        return self.media


def windows(samples: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """Mean and the lowest ``WINDOW_S`` window of ``key`` over ``samples`` (one a second)."""
    values = [sample[key] for sample in samples if sample[key] is not None]
    if not values:
        return {"mean": None, "lowest_window": None, "seconds": 0}
    size = max(1, int(WINDOW_S))
    means = [float(np.mean(values[i : i + size])) for i in range(0, max(1, len(values) - size + 1))]
    return {"mean": round(float(np.mean(values)), 2), "lowest_window": round(min(means), 2), "seconds": len(values)}


def run_live(clip: Path, size: str, budget: str, scratch: Path) -> dict[str, Any]:
    """The demo served to one viewer while the server trains a twin from ``clip``; then the twin goes live."""
    env = {"TWINCAST_SERVE_TWINS_DIR": str(scratch / "twins"), "TWINCAST_SERVE_TWIN_PREVIEW_EVERY_S": "120"}
    with ServerProcess("demo", "--port", "0", "--pose", "still", "-q", env=env) as server:
        viewer = Viewer(server.url)
        samples: list[dict[str, Any]] = []
        started = time.monotonic()

        def sample(phase: str, job: dict[str, Any] | None) -> None:
            stats = server.get("/api/stats", timeout=10)[1]["sessions"]["default"]
            samples.append({"t": round(time.monotonic() - started, 1), "phase": phase, "fps": stats["fps"],
                            "late": stats["late_frames"], "repeated": stats["repeated_frames"],
                            "load": os.getloadavg()[0], "stage": job and job.get("stage"),
                            "progress": job and job.get("progress")})

        while time.monotonic() - started < 40:  # the viewer's first seconds, then a baseline
            sample("before", None)
            time.sleep(1)
        with clip.open("rb") as video:
            response = requests.post(server.url + "/api/twins", headers=server.auth, timeout=120,
                                     data={"name": "hopper", "size": size, "budget": budget},
                                     files={"video": ("hopper.mp4", video, "video/mp4")})
        response.raise_for_status()
        job_id = response.json()["job"]["id"]
        upload_at = time.monotonic()
        while True:
            job = server.get(f"/api/jobs/{job_id}", timeout=10)[1]
            sample("training", job)
            if job["state"] not in ("queued", "running"):
                break
            time.sleep(1)
        trained_s = time.monotonic() - upload_at
        if job["state"] != "done":
            raise SystemExit(f"the job ended {job['state']}: {job.get('error')}")
        switched_at = time.monotonic()
        status, answer = server.post("/api/twins/hopper/live", {}, timeout=120)
        assert status == 200, answer
        live_s = time.monotonic() - switched_at
        after = time.monotonic()
        while time.monotonic() - after < 20:
            sample("after", None)
            time.sleep(1)
        media = viewer.stop()
    skip = 10  # the viewer's ramp-up
    phases = {phase: [s for s in samples[skip:] if s["phase"] == phase] for phase in ("before", "training", "after")}
    arrivals = np.asarray(media.video_arrival_s, dtype=float)
    arrivals = arrivals - arrivals[0] if arrivals.size else arrivals
    span = float(arrivals[-1]) if arrivals.size else 0.0
    counts = [int(np.count_nonzero((arrivals >= t) & (arrivals < t + WINDOW_S)))
              for t in np.arange(skip, max(skip, span - WINDOW_S), 1.0)]
    return {
        "job_s": round(trained_s, 1), "go_live_s": round(live_s, 2), "job": {k: job.get(k) for k in ("result", "plan")},
        "fps": {phase: windows(rows, "fps") for phase, rows in phases.items()},
        "late_frames_during_training": (phases["training"][-1]["late"] - phases["training"][0]["late"])
        if phases["training"] else None,
        "repeated_frames_during_training": (phases["training"][-1]["repeated"] - phases["training"][0]["repeated"])
        if phases["training"] else None,
        "load_mean": {phase: round(float(np.mean([s["load"] for s in rows])), 2) if rows else None
                      for phase, rows in phases.items()},
        "viewer": {"frames": int(arrivals.size), "seconds": round(span, 1),
                   "fps_mean": round(arrivals.size / span, 2) if span else None,
                   "fps_lowest_window": round(min(counts) / WINDOW_S, 2) if counts else None,
                   "audio_s": round(media.audio_seconds, 1)},
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("create", "live"))
    parser.add_argument("--size", default="demo")
    parser.add_argument("--budget", default=None, help="default: 15m for create, 5m for live")
    parser.add_argument("--cache", type=Path, default=Path("bench-cache"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    budget = args.budget or ("15m" if args.mode == "create" else "5m")
    parse_duration(budget)  # refuses a malformed one before anything runs
    clip = footage(args.cache)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "mode": args.mode, "size": args.size,
                              "budget": budget, "machine": machine(),
                              "command": " ".join([".venv/bin/python -m bench.time_to_twin", *sys.argv[1:]])}
    if args.mode == "create":
        report.update(run_create(clip, args.cache / "time-to-twin", args.size, budget))
    else:
        report.update(run_live(clip, args.size, budget, args.cache / "time-to-twin-live"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("samples", "plan", "job")}, indent=1))


if __name__ == "__main__":
    main()
