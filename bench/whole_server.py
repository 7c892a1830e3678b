"""How many live twins the whole server carries: `twincast serve` with N sessions, each speaking and watched by
V WebRTC viewers, measured from outside (``python -m bench.sessions --whole-server``; this module holds that mode).

    PYTHONPATH=. python -m bench.sessions --whole-server --preset base --device cuda --sessions 8,24,40,48
                                          [--viewers 1] [--seconds 15] [--settle-s 5] [--max-batch 16]
    PYTHONPATH=. python -m bench.sessions --whole-server --preset tiny --device cpu --sessions 1,2   (a dry run)

The model is a random-weight run of the preset, exported as ``bench.sessions`` does (``bench.gpu.make_run``,
``export.onnx_export.export_run``); the avatar is a synthetic pack of the committed portrait
(``bench.synthetic_pack``, for speed only) at the model's crop size. One real server runs as its own process
(``tests.helpers.ServerProcess`` over ``python -m twincast.cli serve``), with its session, viewer, batch and rate
limits raised through ``TWINCAST_SERVE_*``. On CUDA it serves with ``--engine auto``, which there is PyTorch fp16
with CUDA graphs (``twincast serve`` has no device flag; the engine it chose is checked and reported); on CPU with
ONNX Runtime.

For each N (ascending, on the same server): sessions are added up to N (``POST /api/sessions``), each new one gets
V viewers, and every session is kept speaking (``POST /api/play`` of a generated babble WAV, so the mel input
changes and the speaking path runs; no TTS is needed). After ``--settle-s`` the server is measured for
``--seconds``: each session's fps and its late, repeated and idle frames from ``/api/stats`` (a frame is *on time*
when it was shown with its own render: on-time share = 1 − repeated / frames due), the server's CPU cores (user +
system time per wall second from /proc) and RSS, the GPU's memory in use and utilisation (nvidia-smi, when
there), the render worker's batch and stage timings (queue wait, stacking, engine call, paste-backs: p50/p99),
and what the viewers received.

The viewers run in separate audience processes (``AUDIENCE_SIZE`` viewers each), so their CPU is not the
server's. They do not decode: each aiortc receiver gets a decoder that counts the encoded frames and bytes and
returns nothing (``count_only``), which still sends the RTCP reports the server expects; so 48 viewers cost a
fraction of a core each. ``bench.sessions`` imports this module (and so aiortc and PyAV) only when the mode runs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import queue
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import wave
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from aiortc.codecs.base import Decoder
from aiortc.jitterbuffer import JitterFrame
from av.frame import Frame

from avatar.audio import MelSpec
from bench.gpu import make_run
from bench.serve_cpu import cpu_seconds
from bench.synthetic_pack import build as build_pack
from bench.synthetic_pack import parse_frame_size
from export.onnx_export import export_run
from export.spec import load_spec
from tests.helpers import ServerProcess

REPO = Path(__file__).resolve().parent.parent
FPS = 25
AUDIENCE_SIZE = 12  # viewers per audience process
JOIN_BATCH = 6  # viewers that connect at once
READY_TIMEOUT_S = 120.0
SPEECH_RATE_HZ = 16_000
STAGES = ("queue_wait", "stack", "engine", "paste")
ON_TIME_TARGET = 0.98


# --- the audience (its own process) ---------------------------------------------------------------------------


class CountingDecoder(Decoder):
    """Stands in for aiortc's decoders in an audience process: counts one receiver's encoded frames and bytes."""

    video: ClassVar[list[CountingDecoder]] = []  # every video decoder made in this process, one per viewer

    def __init__(self, is_video: bool) -> None:
        self.frames = 0
        self.bytes = 0
        if is_video:
            CountingDecoder.video.append(self)

    def decode(self, encoded_frame: JitterFrame) -> list[Frame]:
        """Count the frame; decode nothing."""
        self.frames += 1
        self.bytes += len(encoded_frame.data)
        return []


def count_only() -> None:
    """Make this process' aiortc receivers count frames instead of decoding them (one decoder per receiver)."""
    import aiortc.rtcrtpreceiver

    aiortc.rtcrtpreceiver.get_decoder = lambda codec: CountingDecoder(codec.mimeType.lower().startswith("video/"))


async def audience(server: str, sessions: list[str], viewers_each: int) -> None:
    """An audience process: V counting viewers per session; ``ready`` once every one receives video; then on each
    ``mark`` line from stdin a JSON line of the frames each viewer counted and this process' CPU seconds; hangs up
    on any other line or at end of input."""
    import aiohttp

    from stream.whep_client import WhepViewer

    count_only()
    wanted = [session for session in sessions for _ in range(viewers_each)]
    async with aiohttp.ClientSession() as http:
        viewers: list[WhepViewer] = []
        for start in range(0, len(wanted), JOIN_BATCH):
            batch = [WhepViewer(server, session=session, keep_video=1)
                     for session in wanted[start : start + JOIN_BATCH]]
            await asyncio.gather(*(viewer.connect(http) for viewer in batch))
            viewers += batch
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(CountingDecoder.video) < len(viewers) or min(d.frames for d in CountingDecoder.video) == 0:
            if time.monotonic() > deadline:
                print(json.dumps({"error": f"{len(CountingDecoder.video)} of {len(viewers)} viewers received video "
                                  f"within {READY_TIMEOUT_S:.0f} s"}), flush=True)
                return
            await asyncio.sleep(0.2)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "mark":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"frames": [d.frames for d in CountingDecoder.video],
                              "bytes": [d.bytes for d in CountingDecoder.video],
                              "cpu_s": usage.ru_utime + usage.ru_stime, "at": time.monotonic()}), flush=True)
        for viewer in viewers:
            await viewer.hang_up(http)


class Audience:
    """An audience process seen from the bench: started, waited for, asked for its counts, told to hang up."""

    def __init__(self, server: str, sessions: list[str], viewers_each: int, env: dict[str, str]) -> None:
        self.sessions = sessions
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.whole_server", "--audience", "--server", server,
             "--audience-sessions", ",".join(sessions), "--viewers", str(viewers_each)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put("")  # the process ended

    def line(self, timeout_s: float) -> str:
        """The next line it printed (``""`` when it ended).

        Raises:
            RuntimeError: nothing within ``timeout_s``.
        """
        try:
            return self._lines.get(timeout=timeout_s)
        except queue.Empty as exc:
            raise RuntimeError(f"the audience of sessions {self.sessions} said nothing within {timeout_s:.0f} s") \
                from exc

    def wait_ready(self) -> None:
        """Block until every viewer of this audience receives video.

        Raises:
            RuntimeError: it failed or timed out, with what it said.
        """
        line = self.line(READY_TIMEOUT_S + 60)
        if line != "ready":
            raise RuntimeError(f"the audience of sessions {self.sessions} did not get ready: {line or 'it exited'}")

    def mark(self) -> dict[str, Any]:
        """Its viewers' frame counts and its CPU seconds now."""
        assert self.process.stdin is not None
        self.process.stdin.write("mark\n")
        self.process.stdin.flush()
        return dict(json.loads(self.line(30)))

    def hang_up(self) -> None:
        """Tell it to hang up its viewers and exit (without waiting)."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            try:
                self.process.stdin.write("bye\n")
                self.process.stdin.close()
            except BrokenPipeError:
                pass

    def wait(self, timeout_s: float) -> None:
        """Wait for it to exit; kill it after ``timeout_s``."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def close_audiences(audiences: list[Audience]) -> None:
    """Hang up every audience at once, then wait for each (10 s in all before the rest are killed)."""
    for member in audiences:
        member.hang_up()
    deadline = time.monotonic() + 10
    for member in audiences:
        member.wait(max(0.1, deadline - time.monotonic()))


# --- speech, machine readings ---------------------------------------------------------------------------------


def babble_wav(seconds: float, seed: int = 0) -> bytes:
    """Speech-like sound as a 16 kHz mono 16-bit WAV: a voiced buzz (pitch ~120 Hz) shaped into syllables at about
    4 per second with moving formants and short pauses, so the mel features move as speech makes them move."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SPEECH_RATE_HZ)) / SPEECH_RATE_HZ
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SPEECH_RATE_HZ
    syllable = np.floor(t * 4).astype(int)
    first = rng.uniform(300, 800, syllable.max() + 1)[syllable]  # F1 per syllable: the mouth opens and closes
    second = rng.uniform(900, 2200, syllable.max() + 1)[syllable]
    voice = np.zeros_like(t)
    for k in range(1, 25):
        weight = np.exp(-(((k * f0 - first) / 150) ** 2)) + 0.5 * np.exp(-(((k * f0 - second) / 250) ** 2))
        voice += weight * np.sin(k * phase) / k**0.5
    envelope = np.sin(np.pi * ((t * 4) % 1.0)) ** 0.6
    envelope[(t % 2.5) > 2.2] = 0.0  # a pause every 2.5 s
    samples = voice * envelope
    samples = 0.3 * samples / max(1e-9, float(np.abs(samples).max()))
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SPEECH_RATE_HZ)
        out.writeframes(np.round(samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def post_bytes(server: ServerProcess, path: str, data: bytes, content_type: str) -> tuple[int, str]:
    """POST raw bytes to the server as the operator; returns (status, body text)."""
    request = urllib.request.Request(server.url + path, data=data, method="POST",
                                     headers={"Content-Type": content_type, **server.auth})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def rss_mb(pid: int) -> float:
    """A process' resident memory in MB (VmRSS), NaN if unreadable."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values) - idle) / ticks, sum(values) / ticks


def gpu_reading() -> dict[str, float] | None:
    """The GPU's memory in use (MiB) and utilisation (%) from nvidia-smi, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.splitlines()[0]
    except (subprocess.SubprocessError, OSError, IndexError):
        return None
    used, util = (float(v) for v in out.split(","))
    return {"memory_used_mib": used, "utilization_pct": util}


# --- the measurement ------------------------------------------------------------------------------------------


def prepare_model(work: Path, preset_name: str) -> Path:
    """The preset's random-weight run exported to ``work/art/twin.onnx`` (kept: a second run reuses it)."""
    onnx = work / "art" / "twin.onnx"
    if not onnx.is_file():
        run = make_run(work, 2, preset_name)
        export_run(run, onnx, steps=2)
    return onnx


def server_env(args: argparse.Namespace, most: int) -> dict[str, str]:
    """The server's and the audiences' environment: limits raised for ``most`` sessions, the repo on the path."""
    paths = [str(REPO), *(str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p)]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1",
           "TWINCAST_SERVE_MAX_SESSIONS": str(most), "TWINCAST_SERVE_MAX_VIEWERS": str(max(1, most * args.viewers)),
           "TWINCAST_SERVE_MAX_VIEWERS_PER_SESSION": str(max(1, args.viewers)),
           "TWINCAST_SERVE_MAX_BATCH": str(args.max_batch), "TWINCAST_SERVE_OPERATOR_RATE_PER_S": "10000",
           "TWINCAST_SERVE_OPERATOR_BURST": "10000"}
    if args.encode:
        env["TWINCAST_SERVE_ENCODE"] = args.encode
    return env


def check_engine(engine: dict[str, Any], device: str, precision: str) -> str | None:
    """A warning when the engine the server chose is not the one asked for (torch on CUDA at ``precision``)."""
    if device == "cuda" and (engine.get("engine") != "torch" or engine.get("device") != "cuda"
                             or engine.get("precision") != precision):
        return (f"asked for torch on cuda at {precision}, the server runs {engine.get('engine')} on "
                f"{engine.get('device')} at {engine.get('precision')} (serve --engine auto chose it)")
    return None


def top_up_speech(server: ServerProcess, sessions: list[str], stats: dict[str, Any], need_s: float,
                  wav: bytes) -> None:
    """Queue the babble on every session with less than ``need_s`` seconds of speech waiting."""
    for session in sessions:
        queued = stats["sessions"][session]["queue"]["speech_frames"] / FPS
        if queued < need_s:
            status, body = post_bytes(server, f"/api/play?session={session}", wav, "audio/wav")
            if status != 202:
                raise RuntimeError(f"POST /api/play for session {session} answered {status}: {body[:300]}")


def snapshot(server: ServerProcess, audiences: list[Audience]) -> dict[str, Any]:
    """Everything read at one instant: /api/stats, the server's CPU seconds, the machine's, the audiences' marks."""
    assert server.process is not None
    busy, total = machine_busy_s()
    return {"at": time.monotonic(), "stats": server.get("/api/stats")[1], "cpu_s": cpu_seconds(server.process.pid),
            "machine_busy_s": busy, "machine_total_s": total, "marks": [a.mark() for a in audiences]}


def session_row(session: str, before: dict[str, Any], after: dict[str, Any], wall: float) -> dict[str, Any]:
    """One session's figures over the window."""
    first, last = before["sessions"][session], after["sessions"][session]
    due = wall * FPS
    repeated = last["repeated_frames"] - first["repeated_frames"]
    return {"id": session, "fps": last["fps"], "late": last["late_frames"] - first["late_frames"],
            "repeated": repeated, "idle": last["idle_frames"] - first["idle_frames"],
            "failed": last["failed_frames"] - first["failed_frames"], "degraded": last["degraded"] is not None,
            "on_time": round(max(0.0, 1 - repeated / due), 4), "compose_ms_p50": last["compose_ms_p50"],
            "render_ms_p99": last["render_ms_p99"]}


def measure_row(server: ServerProcess, audiences: list[Audience], sessions: list[str], args: argparse.Namespace,
                wav: bytes) -> dict[str, Any]:
    """One N: settle, then measure everything over ``args.seconds``."""
    assert server.process is not None
    top_up_speech(server, sessions, server.get("/api/stats")[1], args.settle_s + args.seconds + 5, wav)
    time.sleep(args.settle_s)
    before = snapshot(server, audiences)
    gpu_samples = []
    while time.monotonic() < before["at"] + args.seconds:
        time.sleep(min(1.0, max(0.0, before["at"] + args.seconds - time.monotonic())))
        if (reading := gpu_reading()) is not None:
            gpu_samples.append(reading)
    after = snapshot(server, audiences)
    wall = after["at"] - before["at"]
    rows = [session_row(session, before["stats"], after["stats"], wall) for session in sessions]
    viewer_fps = [(b - a) / wall for early, late in zip(before["marks"], after["marks"], strict=True)
                  for a, b in zip(early["frames"], late["frames"], strict=True)]
    audience_cpu = sum(late["cpu_s"] - early["cpu_s"] for early, late in
                       zip(before["marks"], after["marks"], strict=True))
    worker0, worker = before["stats"]["render_worker"], after["stats"]["render_worker"]
    due = wall * FPS * len(sessions)
    repeated = sum(row["repeated"] for row in rows)
    row: dict[str, Any] = {
        "sessions": len(sessions), "viewers_each": args.viewers, "seconds": round(wall, 1),
        "fps_min": min(r["fps"] for r in rows), "fps_mean": round(float(np.mean([r["fps"] for r in rows])), 2),
        "on_time": round(max(0.0, 1 - repeated / due), 4), "on_time_worst": min(r["on_time"] for r in rows),
        "late_frames": sum(r["late"] for r in rows), "repeated_frames": repeated,
        "idle_frames": sum(r["idle"] for r in rows), "failed_frames": sum(r["failed"] for r in rows),
        "degraded_sessions": sum(r["degraded"] for r in rows),
        "viewer_fps_min": round(min(viewer_fps), 2) if viewer_fps else None,
        "viewer_fps_mean": round(float(np.mean(viewer_fps)), 2) if viewer_fps else None,
        "server_cpu_cores": round((after["cpu_s"] - before["cpu_s"]) / wall, 2),
        "server_rss_mb": rss_mb(server.process.pid),
        "machine_busy_cores": round((after["machine_busy_s"] - before["machine_busy_s"])
                                    / (after["machine_total_s"] - before["machine_total_s"]) * (os.cpu_count() or 1),
                                    2),
        "audience_cpu_cores": round(audience_cpu / wall, 2),
        "compose_ms_p50_mean": _mean([r["compose_ms_p50"] for r in rows]),
        "worker": {"mean_batch": worker["mean_batch"], "calls_per_s": round((worker["calls"] - worker0["calls"]) / wall,
                                                                            1),
                   "dropped_jobs": worker["dropped_jobs"] - worker0["dropped_jobs"],
                   "stale_jobs": worker["stale_jobs"] - worker0["stale_jobs"],
                   **{f"{stage}_ms_{q}": worker.get(f"{stage}_ms_{q}") for stage in STAGES for q in ("p50", "p99")}},
        "per_session": rows,
    }
    if gpu_samples:
        row["gpu_memory_used_mib"] = max(sample["memory_used_mib"] for sample in gpu_samples)
        row["gpu_utilization_pct_mean"] = round(float(np.mean([s["utilization_pct"] for s in gpu_samples])), 1)
    row["meets_target"] = row["on_time"] >= ON_TIME_TARGET and row["fps_min"] >= FPS - 1
    return row


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(float(np.mean(present)), 2) if present else None


def per_audience(viewers_each: int) -> int:
    """Sessions one audience process watches."""
    return max(1, AUDIENCE_SIZE // max(1, viewers_each))


def start_audiences(url: str, sessions: list[str], viewers_each: int, env: dict[str, str]) -> list[Audience]:
    """Audience processes watching ``sessions`` (``per_audience`` each), once every viewer of them receives."""
    size = per_audience(viewers_each)
    started = [Audience(url, sessions[i : i + size], viewers_each, env) for i in range(0, len(sessions), size)]
    for member in started:
        member.wait_ready()
    return started


def add_sessions(server: ServerProcess, sessions: list[str], count: int) -> list[str]:
    """Create sessions until there are ``count``; returns the new ones' ids."""
    added = []
    while len(sessions) < count:
        session = f"s{len(sessions)}"
        status, body = server.post("/api/sessions", {"id": session})
        if status != 201:
            raise RuntimeError(f"POST /api/sessions {session} answered {status}: {body}")
        sessions.append(session)
        added.append(session)
    return added


def run(args: argparse.Namespace) -> None:
    """The whole-server mode: prepare the model and pack, start the server, measure each N, report (to stdout, and
    to ``$OUT/whole_server_b{max_batch}.json`` after every row when ``OUT`` is set). A SIGTERM (a time bound)
    ends it as an exit would: the viewers hang up, the server is stopped, the rows so far are written."""
    counts = sorted({int(n) for n in args.sessions.split(",")})
    if counts[0] < 1 or counts[-1] > 256:
        raise SystemExit(f"--sessions {args.sessions}: each count must be in 1..256")
    if args.viewers < 0:
        raise SystemExit(f"--viewers {args.viewers} must be 0 or more")
    frame_size = parse_frame_size(args.frame)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = Path(os.environ["OUT"]) / f"whole_server_b{args.max_batch}.json" if os.environ.get("OUT") else None
    report: dict[str, Any] = {
        "mode": "whole-server", "date": time.strftime("%Y-%m-%d"), "args": vars(args),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}", "rows": []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(args.work) if args.work else Path(scratch)
            work.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            onnx = prepare_model(work, args.preset)
            spec = load_spec(onnx)
            pack = build_pack(work / "pack", crop_px=spec.crop_px, mask_top=spec.mask_top,
                              seconds=args.pack_seconds, frame_size=frame_size, mel=MelSpec(**spec.mel))
            report.update({"pack": {"frame_size": list(frame_size), "crop_px": pack.meta.crop_px,
                                    "frames": pack.meta.frame_count, "synthetic": True},
                           "prepare_s": round(time.perf_counter() - started, 1), "gpu_before_server": gpu_reading()})
            print(json.dumps({k: report[k] for k in ("machine", "pack", "prepare_s", "gpu_before_server")}),
                  flush=True)
            serve_and_measure(args, counts, onnx, pack.root, work, report, out)
    except BaseException as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        save(report, out)
        print_table(report)


def serve_and_measure(args: argparse.Namespace, counts: list[int], onnx: Path, pack: Path, work: Path,
                      report: dict[str, Any], out: Path | None) -> None:
    """Start the server and measure each N on it, appending rows to ``report`` (saved after each)."""
    env = server_env(args, counts[-1])
    engine = "auto" if args.device == "cuda" else "onnxruntime"
    started = time.perf_counter()
    with ServerProcess("serve", "--model", str(onnx), "--avatar", str(pack), "--engine", engine, "--port", "0",
                       "-q", env=env, command=[sys.executable, "-m", "twincast.cli"], cwd=work,
                       startup_s=args.startup_s) as server:
        stats = server.get("/api/stats")[1]
        report.update({"server_start_s": round(time.perf_counter() - started, 1), "engine": stats["engine"],
                       "engine_warning": check_engine(stats["engine"], args.device, args.precision)})
        print(json.dumps({k: report[k] for k in ("server_start_s", "engine", "engine_warning")}), flush=True)
        sessions = [stats["default_session"]]
        audiences: list[Audience] = []
        watched: set[str] = set()
        wav = babble_wav(args.settle_s + args.seconds + 15)
        try:
            for count in counts:
                add_sessions(server, sessions, count)
                if args.viewers:
                    unwatched = [session for session in sessions if session not in watched]
                    audiences += start_audiences(server.url, unwatched, args.viewers, {**os.environ, **env})
                    watched.update(unwatched)
                row = measure_row(server, audiences, sessions, args, wav)
                report["rows"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "per_session"}), flush=True)
                save(report, out)
        finally:
            close_audiences(audiences)
            report["server_log_tail"] = server.lines[-40:]


def save(report: dict[str, Any], out: Path | None) -> None:
    """Write the report so far to ``out`` (when set)."""
    if out is not None:
        out.write_text(json.dumps(report, indent=1))


def print_table(report: dict[str, Any]) -> None:
    """The rows as a table."""
    engine = report.get("engine", {})
    print(f"# whole server · {engine.get('engine')} on {engine.get('device')} {engine.get('precision')} · "
          f"{report['machine']}" + (f" · stopped: {report['error']}" if report.get("error") else ""))
    print(f"{'N':>3} {'fps min':>7} {'on time':>8} {'late':>5} {'rep':>5} {'viewer fps':>10} {'srv cores':>9} "
          f"{'RSS MB':>7} {'batch':>5} {'wait p50':>8} {'stack':>6} {'engine':>7} {'eng p99':>7} {'paste':>6} "
          f"{'GPU MiB':>7} {'GPU %':>5} {'ok':>3}")
    for row in report["rows"]:
        worker = row["worker"]
        print(f"{row['sessions']:>3} {row['fps_min']:>7.2f} {row['on_time']:>8.1%} {row['late_frames']:>5} "
              f"{row['repeated_frames']:>5} {row['viewer_fps_min'] or 0:>10.2f} {row['server_cpu_cores']:>9.2f} "
              f"{row['server_rss_mb']:>7.0f} {worker['mean_batch'] or 0:>5.1f} "
              f"{worker['queue_wait_ms_p50'] or 0:>8.2f} "
              f"{worker['stack_ms_p50'] or 0:>6.2f} {worker['engine_ms_p50'] or 0:>7.2f} "
              f"{worker['engine_ms_p99'] or 0:>7.2f} {worker['paste_ms_p50'] or 0:>6.2f} "
              f"{row.get('gpu_memory_used_mib', 0):>7.0f} {row.get('gpu_utilization_pct_mean', 0):>5.1f} "
              f"{'yes' if row['meets_target'] else 'no':>3}")


def main() -> None:
    """The audience process' entry (``python -m bench.whole_server --audience ...``)."""
    parser = argparse.ArgumentParser(description="an audience process of bench.sessions --whole-server")
    parser.add_argument("--audience", action="store_true", required=True)
    parser.add_argument("--server", required=True)
    parser.add_argument("--audience-sessions", required=True)
    parser.add_argument("--viewers", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(audience(args.server, args.audience_sessions.split(","), args.viewers))


if __name__ == "__main__":
    main()
