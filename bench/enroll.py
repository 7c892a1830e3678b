"""Enrollment cost on long, high-resolution footage: wall time, peak memory and where the time goes.

Run:  .venv/bin/python -m bench.enroll [--minutes 5] [--height 1080] [--fps 30] [--keep DIR]

The footage is made here (no downloads): a synthetic talking-head clip of the committed portrait, scaled into
a 16:9 frame of the given height, resampled to the given rate and looped to the given length with its speech.
Enrollment then runs as `twincast enroll` in a child process whose wall time and peak resident memory are
measured; its progress bars' timings show how the two passes split the time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatar.audio import PLAYBACK_RATE_HZ
from avatar.video_io import VideoWriter, iter_frames, read_audio

TWINCAST = str(Path(sys.executable).with_name("twincast"))
TEXT = ("Welcome back to the stream. Today we are looking at a jacket that folds into its own pocket. "
        "It comes in four colours, and every size is in stock right now.")


def make_footage(out: Path, scratch: Path, *, minutes: float, height: int, fps: int) -> None:
    """Write ``minutes`` of ``height``p footage at ``fps`` (H.264 + AAC) built from a synthetic clip."""
    clip = scratch / "seed.mp4"
    subprocess.run([TWINCAST, "synth-footage", "--text", TEXT, "--out", str(clip), "--size", str(height // 2),
                    "-q"], check=True)
    frames = [rgb for _, rgb in iter_frames(clip, 25)]
    audio = read_audio(clip, PLAYBACK_RATE_HZ)
    width = height * 16 // 9
    width -= width % 2
    count = int(minutes * 60 * fps)
    looped = np.resize(audio, count * PLAYBACK_RATE_HZ // fps).astype(np.float32)
    per_frame = PLAYBACK_RATE_HZ // fps
    canvas = np.full((height, width, 3), 70, np.uint8)
    left = (width - height) // 2
    with VideoWriter(out, width=width, height=height, fps=fps, crf=20) as writer:
        for index in tqdm(range(count), desc="bench: footage", unit="frame"):
            source = frames[round(index * 25 / fps) % len(frames)]
            canvas[:, left : left + height] = cv2.resize(source, (height, height), interpolation=cv2.INTER_LINEAR)
            writer.write(canvas, looped[index * per_frame : (index + 1) * per_frame])


def _pass_seconds(stderr: str, name: str) -> float | None:
    """The elapsed time tqdm last printed for a progress bar (e.g. ``[04:12<00:00``)."""
    found = re.findall(rf"{re.escape(name)}:.*?\[(\d+):(\d+)(?::(\d+))?<", stderr)
    if not found:
        return None
    parts = [int(p) for p in found[-1] if p]
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + part
    return float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--crop-px", type=int, default=128)
    parser.add_argument("--keep", type=Path, help="keep the footage and pack in this directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = args.keep or Path(scratch_name)
        scratch.mkdir(parents=True, exist_ok=True)
        footage = scratch / f"footage-{args.height}p{args.fps}.mp4"
        if not footage.is_file():
            make_footage(footage, scratch, minutes=args.minutes, height=args.height, fps=args.fps)
        pack = scratch / "pack"
        stdout_file, stderr_file = scratch / "enroll.out", scratch / "enroll.err"
        started = time.monotonic()
        with stdout_file.open("w") as out, stderr_file.open("w") as err:
            child = subprocess.Popen([TWINCAST, "enroll", str(footage), "--out", str(pack), "--crop-px",
                                      str(args.crop_px), "--force", "--report"], stdout=out, stderr=err)
            # wait4 gives this child's own peak (RUSAGE_CHILDREN would also count the synth-footage child)
            _, status, usage = os.wait4(child.pid, 0)
        wall = time.monotonic() - started
        stderr = stderr_file.read_text()
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"enroll failed ({os.waitstatus_to_exitcode(status)}):\n{stderr[-3000:]}")
        peak_kib = usage.ru_maxrss
        summary = json.loads(stdout_file.read_text().strip().splitlines()[-1])
        row = {
            "footage": f"{args.minutes:g} min {args.height}p{args.fps}",
            "crop_px": args.crop_px,
            "frames": summary["frames"],
            "wall_s": round(wall, 1),
            "realtime_factor": round(args.minutes * 60 / wall, 2),
            "peak_rss_gib": round(peak_kib / 2**20, 2),
            "pass1_faces_s": _pass_seconds(stderr, "enroll: faces"),
            "pass2_crops_s": _pass_seconds(stderr, "enroll: crops"),
            "usable_s": summary["usable_s"],
            "cpus": len(os.sched_getaffinity(0)),
            "machine": platform.processor() or platform.machine(),
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(row))


if __name__ == "__main__":
    main()
