"""Soak: a twin live for an hour under a steady, varied load, watched over time (the demo unless --model/--avatar).

    .venv/bin/python -m bench.soak [--minutes 60] [--out DIR]

What runs, all on this machine: ``twincast demo`` (or ``serve``) in a subprocess with a still head; one aiortc
WHEP viewer that stays for the whole run; speech pushed over ``/api/push`` every 10 s; a second viewer that joins
every 30 s and leaves after 20 s; an RTMP push to a local nginx-rtmp ingest (started and stopped here); an MP4
recording, stopped and checked with ffprobe at the end.

Once a second it records the server's RSS, threads, open files and CPU time (from /proc), the machine's load,
the server's stats (fps, late, repeated and idle frames, viewers), the RTMP output's state and reconnects and
what the ingest has received, and the recording's size. Per utterance it finds, in what the long-lived viewer
received, the mouth onset and the audio onset with ``bench.live``'s detectors (the mouth judged against the
idle frames just before each push), their offset (mouth − sound) and how long after the push the sound
arrived; drift is the median offset of the last tenth of the utterances rendered on time (no frame repeated
around the push: see ``mark_on_time``) minus that of the first tenth.
Writes DIR/soak.json (the series and a summary) and DIR/soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import numpy as np

from bench.live import mouth_box, mouth_changes, onset_pairs, push_speech, speech_pcm, trim_leading_silence
from stream.whep_client import ReceivedMedia, pull
from tests.helpers import ServerProcess
from tests.stream.rtmp_ingest import RtmpIngest, ffprobe
from twincast.errors import InputError

STREAM_KEY = "soak"
UTTERANCE = "Papa bought a big bag of apples."
LIVE_STATES = {"rtmp": "live", "record": "recording"}
IDLE_BEFORE_S = 1.5  # each utterance's mouth is compared with the idle frames this long before its push ...
ONSET_WITHIN_S = 3.0  # ... and its onsets are looked for this long after it
ON_TIME_AFTER_S = 1.0  # an utterance was rendered on time when no frame was repeated until this long after it


@dataclass(frozen=True)
class SoakPlan:
    """What the soak does and how often."""

    minutes: float = 60.0
    speak_every_s: float = 10.0
    first_speech_s: float = 6.0  # the viewer's first seconds are the encoder's ramp-up: no idle reference
    churn_every_s: float = 30.0  # a second viewer joins this often ...
    churn_hold_s: float = 20.0  # ... and leaves after this long
    sample_every_s: float = 1.0
    window_s: float = 10.0  # frame rates are judged per window of this length

    def __post_init__(self) -> None:
        if not 0.5 <= self.minutes <= 24 * 60:
            raise InputError(f"soak minutes {self.minutes} must be in 0.5..1440")


@dataclass
class Sample:
    """One look at the server, ``t_s`` seconds into the soak."""

    t_s: float
    rss_mb: float
    threads: int
    open_files: int
    cpu_s: float  # the server's CPU time so far (user + system)
    load_1min: float  # the machine's load average: the soak shares it with whatever else runs
    fps: float
    render_ms_p99: float | None
    late_frames: int
    repeated_frames: int
    idle_frames: int
    viewers: int
    speech_frames: int
    rtmp_state: str
    rtmp_reconnects: int
    rtmp_dropped: int
    ingest_mb: float
    recording_state: str
    recording_mb: float
    recording_dropped: int


@dataclass
class SoakLog:
    """Everything the soak collected while it ran (times are ``time.monotonic()``)."""

    started_at: float = 0.0
    samples: list[Sample] = field(default_factory=list)
    pushes: list[float] = field(default_factory=list)
    speech_errors: list[str] = field(default_factory=list)
    churn: list[tuple[float, float]] = field(default_factory=list)  # (joined, left) of each churning viewer
    churn_errors: list[str] = field(default_factory=list)
    after_load: Sample | None = None  # one more look once every churning viewer has hung up


class ProcessFigures(NamedTuple):
    """A process's resident memory, threads, open file descriptors and CPU time used so far."""

    rss_mb: float
    threads: int
    open_files: int
    cpu_s: float


def process_figures(pid: int) -> ProcessFigures:
    """``pid``'s figures, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = stat[stat.rindex(")") + 2:].split()  # after the command name: state is field 3, utime/stime 14/15
    cpu_s = (int(ticks[11]) + int(ticks[12])) / os.sysconf("SC_CLK_TCK")
    return ProcessFigures(int(fields["VmRSS"].split()[0]) / 1024, int(fields["Threads"]),
                          len(os.listdir(f"/proc/{pid}/fd")), cpu_s)


def file_mb(path: Path) -> float:
    """A file's size in MB (0 when it does not exist yet)."""
    try:
        return path.stat().st_size / 1e6
    except FileNotFoundError:
        return 0.0


def recording_file(target: Path) -> Path:
    """Where a recording is while it is written (its hidden temporary file), or its target once finished."""
    scratch = sorted(target.parent.glob(".recording-*.mp4"))
    return scratch[0] if scratch and not target.exists() else target


class Soak:
    """One soak of a running server: start its outputs, load it and watch it, then stop and check the outputs."""

    def __init__(self, server: ServerProcess, pack: Path, ingest: RtmpIngest, plan: SoakPlan,
                 progress: Callable[[str], None] | None = None) -> None:
        if server.process is None:
            raise InputError("the soak needs a started server (use ServerProcess as a context manager)")
        self.server = server
        self.pid = server.process.pid
        self.pack = pack
        self.ingest = ingest
        self.plan = plan
        self.progress = progress or (lambda line: None)
        self.log = SoakLog()
        self.outputs: dict[str, dict[str, Any]] = {}  # kind → the output as the API described it when started
        self.pcm, self.rate_hz = speech_pcm(UTTERANCE)
        self.pcm = trim_leading_silence(self.pcm)

    async def run(self) -> dict[str, Any]:
        """Start the outputs, run the load for ``plan.minutes`` under a long-lived viewer, stop, analyse."""
        async with aiohttp.ClientSession(headers=self.server.auth) as http:
            await self._start_outputs(http)
            rows, cols = mouth_box(self.pack)
            media = await pull(self.server.url, 0.0, keep_video=10**8, during=lambda: self._load(http),
                               reduce=lambda rgb: rgb[rows, cols].copy())
            finals = await self._stop_outputs(http)
        return self.report(media, finals)

    async def _api(self, http: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> Any:
        async with http.request(method, self.server.url + path, json=body) as response:
            payload = await response.json()
            if response.status >= 300:
                raise InputError(f"{method} {path} answered {response.status}: {payload}")
            return payload

    async def _start_outputs(self, http: aiohttp.ClientSession) -> None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.outputs["rtmp"] = await self._api(http, "POST", "/api/outputs",
                                               {"kind": "rtmp", "url": self.ingest.url(STREAM_KEY)})
        self.outputs["record"] = await self._api(http, "POST", "/api/outputs",
                                                 {"kind": "record", "path": f"soak-{stamp}.mp4"})
        deadline = time.monotonic() + 30.0
        while True:
            states = {o["kind"]: o["state"] for o in (await self._api(http, "GET", "/api/outputs"))["outputs"]}
            if all(states.get(kind) == state for kind, state in LIVE_STATES.items()):
                return
            if time.monotonic() > deadline:
                raise InputError(f"the outputs did not start within 30 s: {states}")
            await asyncio.sleep(0.2)

    async def _stop_outputs(self, http: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        """Stop both outputs (the recording is finished and renamed); returns how each ended."""
        return {kind: await self._api(http, "DELETE", f"/api/outputs/{output['id']}")
                for kind, output in self.outputs.items()}

    async def _load(self, http: aiohttp.ClientSession) -> None:
        """The soak proper, while the long-lived viewer receives: sample, speak and churn until the end."""
        self.log.started_at = time.monotonic()
        end = self.log.started_at + 60 * self.plan.minutes
        # One task group: when a task fails (the server went away), the others are cancelled while the viewers'
        # peers still run, so each churning viewer hangs up before the loop winds down.
        async with asyncio.TaskGroup() as group:
            group.create_task(self._sample_until(http, end), name="soak-sample")
            group.create_task(self._speak_until(end), name="soak-speak")
            group.create_task(self._churn_until(end), name="soak-churn")
        self.log.after_load = await self._sample(http)

    async def _sample_until(self, http: aiohttp.ClientSession, end: float) -> None:
        next_at, minute = time.monotonic(), 0
        while next_at <= end:
            try:
                sample = await self._sample(http)
            except aiohttp.ClientError:
                await self._raise_if_server_exits(within_s=10.0)
                raise
            self.log.samples.append(sample)
            if sample.t_s >= 60 * (minute + 1):
                minute += 1
                self.progress(f"{minute:3d} min: RSS {sample.rss_mb:.0f} MB, fps {sample.fps:.1f}, late "
                              f"{sample.late_frames}, repeated {sample.repeated_frames}, viewers {sample.viewers}, "
                              f"rtmp {sample.rtmp_state} ({sample.ingest_mb:.0f} MB received), recording "
                              f"{sample.recording_mb:.0f} MB, {len(self.log.pushes)} utterances")
            next_at += self.plan.sample_every_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    async def _raise_if_server_exits(self, within_s: float) -> None:
        """Say so (InputError, with its last lines) when the server process ends within ``within_s``: a server
        that stopped answering may still be shutting down."""
        deadline = time.monotonic() + within_s
        while self.server.process is not None and time.monotonic() < deadline:
            if self.server.process.poll() is not None:
                raise InputError(f"the server exited (status {self.server.process.returncode}) "
                                 f"{time.monotonic() - self.log.started_at:.0f} s into the soak:\n"
                                 + "\n".join(self.server.lines[-30:]))
            await asyncio.sleep(0.2)

    async def _sample(self, http: aiohttp.ClientSession) -> Sample:
        stats = await self._api(http, "GET", "/api/stats")
        session = stats["sessions"][stats["default_session"]]
        outputs = {o["id"]: o for o in session["outputs"]}
        rtmp = outputs.get(self.outputs["rtmp"]["id"], {"state": "gone", "reconnects": -1, "dropped": -1})
        record = outputs.get(self.outputs["record"]["id"], {"state": "gone", "dropped": -1})
        figures = process_figures(self.pid)
        return Sample(
            t_s=round(time.monotonic() - self.log.started_at, 2), rss_mb=round(figures.rss_mb, 1),
            threads=figures.threads, open_files=figures.open_files, cpu_s=round(figures.cpu_s, 2),
            load_1min=round(os.getloadavg()[0], 2), fps=session["fps"], render_ms_p99=session["render_ms_p99"],
            late_frames=session["late_frames"], repeated_frames=session["repeated_frames"],
            idle_frames=session["idle_frames"], viewers=session["viewers"],
            speech_frames=session["queue"]["speech_frames"], rtmp_state=rtmp["state"],
            rtmp_reconnects=rtmp["reconnects"], rtmp_dropped=rtmp["dropped"],
            ingest_mb=round(file_mb(self.ingest.root / "rec" / f"{STREAM_KEY}.flv"), 3),
            recording_state=record["state"],
            recording_mb=round(file_mb(recording_file(Path(self.outputs["record"]["target"]))), 3),
            recording_dropped=record["dropped"])

    async def _speak_until(self, end: float) -> None:
        """An utterance every ``speak_every_s``, pushed over ``/api/push`` as an agent would (as bench.live
        drift does); the last one starts early enough to be heard whole before the end."""
        utterance_s = len(self.pcm) / 2 / self.rate_hz
        next_at = self.log.started_at + self.plan.first_speech_s
        while next_at + utterance_s + 2.0 < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            try:
                self.log.pushes.append(await push_speech(self.server.url, self.pcm, self.rate_hz))
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.log.speech_errors.append(f"{time.monotonic() - self.log.started_at:.0f} s: {exc!r}")
            next_at += self.plan.speak_every_s

    async def _churn_until(self, end: float) -> None:
        """A second viewer joins every ``churn_every_s`` and leaves (hanging up with DELETE) after
        ``churn_hold_s``; one that cannot join is noted, and the next one tries again."""
        next_at = self.log.started_at + 5.0
        while next_at + self.plan.churn_hold_s < end:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            joined = time.monotonic()
            try:
                await pull(self.server.url, self.plan.churn_hold_s, keep_video=1, reduce=lambda rgb: rgb[:1, :1])
                self.log.churn.append((joined, time.monotonic()))
            except (TimeoutError, InputError, aiohttp.ClientError) as exc:
                self.log.churn_errors.append(f"{joined - self.log.started_at:.0f} s: {exc!r}")
            next_at += self.plan.churn_every_s

    def report(self, media: ReceivedMedia, finals: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The series, the utterances' offsets, the outputs' ends and a summary (JSON-ready)."""
        origin = self.log.started_at
        samples = self.log.samples
        series = {name: [getattr(s, name) for s in samples] for name in asdict(samples[0])}
        utterances = mark_on_time(self.utterances(media), series)
        received = received_fps(np.array(media.video_arrival_s) - origin, self.plan.window_s, 60 * self.plan.minutes)
        recording = check_recording(Path(finals["record"]["target"]))
        report: dict[str, Any] = {
            "benchmark": "soak", "plan": asdict(self.plan), "series": series,
            "server_fps_windows": window_means(series["t_s"], series["fps"], self.plan.window_s,
                                               60 * self.plan.minutes),
            "received_fps_windows": received, "utterances": utterances,
            "after_load": asdict(self.log.after_load) if self.log.after_load is not None else None,
            "speech": {"pushed": len(self.log.pushes), "errors": self.log.speech_errors},
            "churn": {"viewers": [[round(a - origin, 1), round(b - origin, 1)] for a, b in self.log.churn],
                      "errors": self.log.churn_errors},
            "outputs": {"rtmp_at_end": series["rtmp_state"][-1], "rtmp": finals["rtmp"],
                        "record": finals["record"], "recording": recording},
            "received": {"video_pts_span_s": (media.video_pts[-1] - media.video_pts[0]) / 90_000,
                         "audio_s": round(media.audio_seconds, 2), "frames": len(media.video_arrival_s)},
        }
        report["summary"] = summarize(report)
        return report

    def utterances(self, media: ReceivedMedia) -> list[dict[str, Any]]:
        """Each utterance: when it was pushed and, where its mouth and audio onsets were both found, its offset
        (mouth − sound) and how long after the push each onset reached the viewer (None where not found).

        Each utterance is judged on its own window (``bench.live``'s ``mouth_changes`` and ``onset_pairs``): its
        mouth against the idle frames of the ``IDLE_BEFORE_S`` before its push, not against the first second of
        the run, since the encoder's picture of the idle face changes over an hour (and under load)."""
        video_s, audio_s = np.array(media.video_arrival_s), np.array(media.audio_arrival_s)
        utterances: list[dict[str, Any]] = []
        for pushed in self.log.pushes:
            v_first, v_end = np.searchsorted(video_s, [pushed - IDLE_BEFORE_S, pushed + ONSET_WITHIN_S])
            a_first, a_end = np.searchsorted(audio_s, [pushed - IDLE_BEFORE_S, pushed + ONSET_WITHIN_S])
            found: dict[str, float | None] = {"offset_ms": None, "mouth_ms": None, "audio_ms": None}
            if v_end - v_first >= 25:  # at least a second of frames around the push
                window = ReceivedMedia(audio_blocks=media.audio_blocks[a_first:a_end],
                                       audio_arrival_s=media.audio_arrival_s[a_first:a_end])
                series = mouth_changes(media.video[v_first:v_end])  # differences from the first 10, idle, frames
                pairs, _ = onset_pairs(window, video_s[v_first:v_end], series, [pushed])
                for _, mouth_s, sound_s in pairs:
                    found = {"offset_ms": round(1000 * (mouth_s - sound_s), 1),
                             "mouth_ms": round(1000 * (mouth_s - pushed), 1),
                             "audio_ms": round(1000 * (sound_s - pushed), 1)}
            utterances.append({"t_s": round(pushed - self.log.started_at, 2), **found})
        return utterances


def mark_on_time(utterances: list[dict[str, Any]], series: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Add to each utterance how many frames the server showed without their render (``repeated_frames``) from
    ``IDLE_BEFORE_S`` before its push to ``ON_TIME_AFTER_S`` after it — its idle reference and its onset — and
    whether there were none (``on_time``). A starved CPU holds the mouth back or shows the un-rendered base
    frame: such an utterance's offset measures the machine's load, not lip sync."""
    times = np.array(series["t_s"])
    repeated = np.array(series["repeated_frames"])
    marked = []
    for utterance in utterances:
        before = max(int(np.searchsorted(times, utterance["t_s"] - IDLE_BEFORE_S, side="right")) - 1, 0)
        after = min(int(np.searchsorted(times, utterance["t_s"] + ON_TIME_AFTER_S)), len(times) - 1)
        count = int(repeated[after] - repeated[before])
        marked.append({**utterance, "repeated_frames": count, "on_time": count == 0})
    return marked


def window_means(times_s: list[float], values: list[float], window_s: float, total_s: float) -> list[float]:
    """The mean of ``values`` in each whole window of ``window_s`` from 0 to ``total_s`` (NaN-free: an empty
    window counts as 0)."""
    t = np.array(times_s)
    v = np.array(values, np.float64)
    means = []
    for start in np.arange(0.0, total_s - window_s + 1e-6, window_s):
        inside = (t >= start) & (t < start + window_s)
        means.append(round(float(v[inside].mean()), 2) if inside.any() else 0.0)
    return means


def received_fps(arrivals_s: np.ndarray, window_s: float, total_s: float) -> list[float]:
    """Frames received per second in each whole window of ``window_s`` from 0 to ``total_s``."""
    edges = np.arange(0.0, total_s + 1e-6, window_s)
    counts, _ = np.histogram(arrivals_s, bins=edges)
    return [round(float(count) / window_s, 2) for count in counts]


def check_recording(path: Path) -> dict[str, Any]:
    """A finished recording as ffprobe sees it, and whether its last seconds decode without an error."""
    if not path.is_file():
        return {"path": str(path), "exists": False}
    probe = ffprobe(str(path), timeout_s=120)
    tail = subprocess.run(["ffmpeg", "-v", "error", "-sseof", "-5", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True, timeout=120, check=False)
    return {"path": str(path), "exists": True, "mb": round(file_mb(path), 2),
            "duration_s": float(probe["format"].get("duration", 0.0)),
            "video": probe.get("video", {}).get("codec_name"), "audio": probe.get("audio", {}).get("codec_name"),
            "tail_decodes": tail.returncode == 0 and not tail.stderr.strip(), "tail_errors": tail.stderr[-500:]}


def first_last(values: list[float]) -> tuple[float, float, float]:
    """(median of the first tenth of ``values``, of the last tenth, last − first). A tenth is at least four values
    when there are eight or more (half of them when fewer), so one utterance whose mouth was held back by a
    starved CPU, or the 20 ms and 40 ms steps the onsets are found on, do not pass for drift."""
    count = len(values)
    share = max(1, count // 10, min(4, count // 2))
    first, last = float(np.median(values[:share])), float(np.median(values[-share:]))
    return round(first, 1), round(last, 1), round(last - first, 1)


def rss_figures(times_s: list[float], rss_mb: list[float]) -> dict[str, float]:
    """RSS at the start and end, its slope (least squares, MB per hour) after the first minute (warm-up: the
    encoders' and viewers' first allocations), and its growth over the last minute (medians of 5 s)."""
    t, rss = np.array(times_s), np.array(rss_mb)
    end = t[-1]
    after_warmup = t >= min(60.0, end / 2)
    slope = float(np.polyfit(t[after_warmup], rss[after_warmup], 1)[0]) * 3600
    at_end = float(np.median(rss[t >= end - 5]))
    minute_before = float(np.median(rss[(t >= end - 65) & (t < end - 60)])) if end >= 65 else float(rss[0])
    return {"rss_start_mb": float(rss[0]), "rss_end_mb": float(rss[-1]), "rss_max_mb": float(rss.max()),
            "rss_slope_mb_per_h": round(slope, 1), "rss_growth_last_minute_mb": round(at_end - minute_before, 1)}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the soak is judged by."""
    series = report["series"]
    offsets = [u["offset_ms"] for u in report["utterances"] if u["offset_ms"] is not None]
    on_time = [u for u in report["utterances"] if u["on_time"] and u["offset_ms"] is not None]
    nothing = (float("nan"),) * 3
    first, last, drift = first_last([u["offset_ms"] for u in on_time]) if on_time else nothing
    audio_first, audio_last, _ = first_last([u["audio_ms"] for u in on_time]) if on_time else nothing
    return {
        **rss_figures(series["t_s"], series["rss_mb"]),
        "threads_start_end": [series["threads"][0], series["threads"][-1]],
        "server_cpu_cores_mean": round((series["cpu_s"][-1] - series["cpu_s"][0])
                                       / max(series["t_s"][-1] - series["t_s"][0], 1e-9), 2),
        "load_1min_mean": round(float(np.mean(series["load_1min"])), 2),
        "open_files_start_end": [series["open_files"][0], series["open_files"][-1]],
        "server_fps_min_window": min(report["server_fps_windows"]),
        "server_fps_mean": round(float(np.mean(series["fps"])), 2),
        "received_fps_min_window": min(report["received_fps_windows"]),
        "late_frames": series["late_frames"][-1] - series["late_frames"][0],
        "repeated_frames": series["repeated_frames"][-1] - series["repeated_frames"][0],
        "frames": round(series["t_s"][-1] * 25),
        "utterances": report["speech"]["pushed"], "measured": len(offsets),
        "on_time_unmeasured": sum(1 for u in report["utterances"] if u["on_time"] and u["offset_ms"] is None),
        "offset_min_ms": min(offsets, default=float("nan")), "offset_max_ms": max(offsets, default=float("nan")),
        "on_time": len(on_time),  # measured and rendered on time
        "offset_first_ms": first, "offset_last_ms": last, "drift_ms": drift,
        "drift_all_ms": first_last(offsets)[2] if offsets else float("nan"),
        "push_to_sound_first_ms": audio_first, "push_to_sound_last_ms": audio_last,
        "rtmp_at_end": report["outputs"]["rtmp_at_end"],
        "rtmp_reconnects": report["outputs"]["rtmp"]["reconnects"],
        "ingest_mb": series["ingest_mb"][-1],
        "recording_mb": report["outputs"]["recording"].get("mb"),
        "recording_duration_s": report["outputs"]["recording"].get("duration_s"),
        "churn_viewers": len(report["churn"]["viewers"]), "churn_errors": len(report["churn"]["errors"]),
    }


def run_soak(server_args: list[str], pack: Path, plan: SoakPlan, scratch: Path,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Start an nginx-rtmp ingest and ``twincast SERVER_ARGS`` (recordings under ``scratch``), soak, stop both."""
    ingest = RtmpIngest(scratch / "nginx").start()
    try:
        with ServerProcess(*server_args, "--port", "0", "--pose", "still", "-q",
                           env={"TWINCAST_SERVE_RECORDINGS_DIR": str(scratch / "recordings")}) as server:
            return asyncio.run(Soak(server, pack, ingest, plan, progress).run())
    finally:
        ingest.stop()


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report to a temporary file beside ``path`` and rename it."""
    scratch = path.with_name(f".{path.name}.partial")
    scratch.write_text(json.dumps(report, separators=(",", ":")))
    scratch.replace(path)


def main() -> None:
    from bench.soak_plot import draw
    from twincast.demo import cache_dir, demo_pack

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=Path("soak-results"))
    parser.add_argument("--model")
    parser.add_argument("--avatar")
    args = parser.parse_args()
    if bool(args.model) != bool(args.avatar):
        parser.error("--model and --avatar go together (neither: the demo twin)")
    server_args = ["serve", "--model", args.model, "--avatar", args.avatar] if args.model else ["demo"]
    pack = Path(args.avatar) if args.avatar else demo_pack(cache_dir(), progress=False)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="twincast-soak-") as scratch:
        report = run_soak(server_args, pack, SoakPlan(minutes=args.minutes), Path(scratch),
                          progress=lambda line: print(line, file=sys.stderr, flush=True))
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    report["date"] = time.strftime("%Y-%m-%d %H:%M")
    report["command"] = " ".join([".venv/bin/python -m bench.soak", *sys.argv[1:]])
    report["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                      check=False).stdout.strip()
    write_json(report, args.out / "soak.json")
    draw(report, args.out / "soak.png")
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
