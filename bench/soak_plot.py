"""The soak's report (``bench.soak``) drawn as one PNG: stacked panels against minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

STALL_FPS = 12.0  # below this in a window the stream counts as stalled (the test's bound)


def draw(report: dict[str, Any], png: Path) -> None:
    """Draw ``report``'s series into ``png`` (written to a temporary file beside it, then renamed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {name: np.array(values) for name, values in report["series"].items()}
    minutes = series["t_s"] / 60
    panels = [_memory, _frame_rate, _frame_faults, _av_offset, _rtmp, _recording, _machine]
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 2.1 * len(panels)), sharex=True, dpi=80)
    for panel, axis in zip(panels, axes, strict=True):
        panel(axis, report, series, minutes)
        axis.grid(alpha=0.3)
        for joined_s, left_s in report["churn"]["viewers"]:  # when the second viewer was there
            axis.axvspan(joined_s / 60, left_s / 60, color="tab:gray", alpha=0.07, lw=0)
    axes[-1].set_xlabel("minutes (grey bands: a second viewer is watching)")
    axes[-1].set_xlim(0, max(float(minutes[-1]), 0.1))
    title = f"twincast soak, {report['plan']['minutes']:g} min"
    if "date" in report:
        title += f" — {report['date']}, {report['machine']}"
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    scratch = png.with_name(f".{png.stem}.partial.png")
    figure.savefig(scratch, format="png")
    plt.close(figure)
    scratch.replace(png)


def _memory(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    summary = report["summary"]
    axis.plot(minutes, series["rss_mb"], color="tab:blue", lw=1)
    axis.set_ylabel("server RSS (MB)")
    axis.set_title(f"memory: {summary['rss_start_mb']:.0f} → {summary['rss_end_mb']:.0f} MB, slope after the "
                   f"first minute {summary['rss_slope_mb_per_h']:+.1f} MB/h; threads "
                   f"{summary['threads_start_end'][0]} → {summary['threads_start_end'][1]}, open files "
                   f"{summary['open_files_start_end'][0]} → {summary['open_files_start_end'][1]}", fontsize=9)


def _window_starts(report: dict[str, Any], key: str) -> np.ndarray:
    return np.arange(len(report[key])) * report["plan"]["window_s"] / 60


def _frame_rate(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    window_s = report["plan"]["window_s"]
    axis.plot(minutes, series["fps"], color="tab:blue", lw=0.5, alpha=0.4, label="server, 2 s")
    axis.step(_window_starts(report, "server_fps_windows"), report["server_fps_windows"], where="post",
              color="tab:blue", lw=1.2, label=f"server, {window_s:.0f} s")
    axis.step(_window_starts(report, "received_fps_windows"), report["received_fps_windows"], where="post",
              color="tab:green", lw=1.2, label=f"received by the viewer, {window_s:.0f} s")
    axis.axhline(STALL_FPS, color="tab:red", ls="--", lw=0.8, label="stall bound")
    axis.set_ylim(0, 30)
    axis.set_ylabel("frames/s")
    summary = report["summary"]
    axis.set_title(f"frame rate: server mean {summary['server_fps_mean']:.1f}, lowest {window_s:.0f} s window "
                   f"{summary['server_fps_min_window']:.1f} (server) / {summary['received_fps_min_window']:.1f} "
                   "(received)", fontsize=9)
    axis.legend(loc="lower left", fontsize=7, ncol=4)


def _frame_faults(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    for name, color in (("late_frames", "tab:orange"), ("repeated_frames", "tab:purple"),
                        ("idle_frames", "tab:brown")):
        axis.plot(minutes, series[name] - series[name][0], color=color, lw=1, label=name.replace("_", " "))
    axis.set_ylabel("frames (cumulative)")
    summary = report["summary"]
    axis.set_title(f"late {summary['late_frames']} and repeated {summary['repeated_frames']} of "
                   f"{summary['frames']} frames", fontsize=9)
    axis.legend(loc="upper left", fontsize=7)


def _av_offset(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    utterances = [u for u in report["utterances"] if u["offset_ms"] is not None]
    summary = report["summary"]
    if utterances:
        at = np.array([u["t_s"] for u in utterances]) / 60
        offsets = np.array([u["offset_ms"] for u in utterances])
        on_time = np.array([u["on_time"] for u in utterances])
        axis.scatter(at[on_time], offsets[on_time], s=6, color="tab:blue", label="rendered on time")
        axis.scatter(at[~on_time], offsets[~on_time], s=6, color="tab:orange", label="frames repeated (starved)")
        span = min(10, int(on_time.sum()))
        if span:
            rolling = np.median(np.lib.stride_tricks.sliding_window_view(offsets[on_time], span), axis=1)
            axis.plot(at[on_time][span - 1:], rolling, color="tab:red", lw=1.2, label=f"median of the last {span}")
        latency = axis.twinx()
        latency.plot(at, [u["audio_ms"] for u in utterances], color="tab:gray", lw=0.8, alpha=0.7)
        latency.set_ylabel("push → sound (ms)", color="tab:gray", fontsize=8)
        axis.legend(loc="upper left", fontsize=7)
    axis.set_ylabel("mouth − sound (ms)")
    axis.set_title(f"A/V offset at the long-lived viewer: {summary['measured']} of {summary['utterances']} "
                   f"utterances ({summary['on_time']} on time), {summary['offset_min_ms']:.0f}…"
                   f"{summary['offset_max_ms']:.0f} ms; drift on time {summary['drift_ms']:+.1f} ms; grey: push → "
                   f"sound {summary['push_to_sound_first_ms']:.0f} → {summary['push_to_sound_last_ms']:.0f} ms",
                   fontsize=9)


def _rtmp(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    axis.plot(minutes, series["ingest_mb"], color="tab:blue", lw=1, label="received by nginx-rtmp")
    down = series["rtmp_state"] != "live"
    if down.any():
        axis.scatter(minutes[down], series["ingest_mb"][down], s=8, color="tab:red", label="not live")
        axis.legend(loc="upper left", fontsize=7)
    axis.set_ylabel("RTMP (MB)")
    summary = report["summary"]
    axis.set_title(f"RTMP push: {summary['rtmp_at_end']} at the end, {summary['rtmp_reconnects']} reconnects, "
                   f"{summary['ingest_mb']:.0f} MB received, {int(series['rtmp_dropped'][-1])} frames dropped",
                   fontsize=9)


def _recording(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    axis.plot(minutes, series["recording_mb"], color="tab:blue", lw=1)
    axis.set_ylabel("recording (MB)")
    recording = report["outputs"]["recording"]
    verdict = (f"finished, {recording['duration_s']:.0f} s by ffprobe, last 5 s "
               f"{'decode cleanly' if recording['tail_decodes'] else 'fail to decode'}"
               if recording.get("exists") else "no finished file")
    axis.set_title(f"recording: {verdict}, {int(series['recording_dropped'][-1])} frames dropped", fontsize=9)


def _machine(axis: Any, report: dict[str, Any], series: dict[str, np.ndarray], minutes: np.ndarray) -> None:
    elapsed = np.diff(series["t_s"])
    cores = np.diff(series["cpu_s"]) / np.where(elapsed > 0, elapsed, 1.0)
    span = min(10, len(cores))
    axis.plot(minutes[1:][span - 1:], np.convolve(cores, np.ones(span) / span, mode="valid"), color="tab:blue",
              lw=1, label="server CPU (cores, 10 s mean)")
    axis.plot(minutes, series["load_1min"], color="tab:gray", lw=1, label="machine load average (1 min)")
    axis.set_ylabel("cores")
    axis.set_title("the machine: what the server used and what ran on it altogether", fontsize=9)
    axis.legend(loc="upper left", fontsize=7)
