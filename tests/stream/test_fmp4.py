"""A fragmented MP4 cut off anywhere is cut back to its whole fragments, and what is left plays to the end."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from stream.fmp4 import FRAGMENTED_MP4_OPTIONS, whole_fragments_bytes
from tests.stream.rtmp_ingest import ffprobe


def write_fragmented(path: Path, seconds: int = 6) -> None:
    """``seconds`` of noisy 64² video at 25 fps (a keyframe every 2 s) and a tone, as the recordings are written."""
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w", format="mp4", options=FRAGMENTED_MP4_OPTIONS) as container:
        video = container.add_stream("libx264", rate=25)
        video.width = video.height = 64
        video.pix_fmt = "yuv420p"
        video.options = {"g": "50", "keyint_min": "50", "sc_threshold": "0", "bf": "0"}
        audio = container.add_stream("aac", rate=48_000, layout="mono")
        for index in range(seconds * 25):
            picture = av.VideoFrame.from_ndarray(rng.integers(0, 255, (96, 64), dtype=np.uint8), format="yuv420p")
            picture.pts, picture.time_base = index, Fraction(1, 25)
            container.mux(video.encode(picture))
            tone = (np.sin(np.arange(1920) * 0.05) * 8000).astype(np.int16).reshape(1, -1)
            sound = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
            sound.sample_rate, sound.pts, sound.time_base = 48_000, index * 1920, Fraction(1, 48_000)
            container.mux(audio.encode(sound))
        container.mux(video.encode(None))
        container.mux(audio.encode(None))


def test_a_cut_off_recording_keeps_its_whole_fragments(tmp_path: Path) -> None:
    whole = tmp_path / "whole.mp4"
    write_fragmented(whole)
    payload = whole.read_bytes()
    kept_s = []
    for cut in np.linspace(0, len(payload), 13).astype(int)[1:-1]:  # cut anywhere: in headers, moofs, mdats
        part = tmp_path / f"cut-{cut}.mp4"
        part.write_bytes(payload[:cut])
        length = whole_fragments_bytes(part)
        assert length <= cut
        if length == 0:
            continue  # not one whole fragment yet: nothing that plays
        part.write_bytes(payload[:length])
        decoded = subprocess.run(["ffmpeg", "-v", "error", "-i", str(part), "-f", "null", "-"],
                                 capture_output=True, text=True, check=False)
        assert decoded.returncode == 0 and not decoded.stderr.strip(), (cut, decoded.stderr)
        kept_s.append(float(ffprobe(str(part))["format"]["duration"]))
    assert kept_s == sorted(kept_s) and kept_s[-1] >= 4.0, kept_s  # more file, more kept, up to the last GOP
    assert whole_fragments_bytes(whole) > 0.99 * len(payload)  # a finished file is whole (its index aside)
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert whole_fragments_bytes(tmp_path / "empty.mp4") == 0
