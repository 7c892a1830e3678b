"""Recordings: a fragmented MP4 cut off anywhere is cut back to its whole fragments, and what is left plays to the
end; a frame the session skipped is filled so the file stays 25 fps."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Coroutine
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError

from stream.fmp4 import FRAGMENTED_MP4_OPTIONS, whole_fragments_bytes
from stream.outputs import StreamOutput
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


class _Source(MediaStreamTrack):
    """An unpaced source of numbered frames (video: a grey level per frame; audio: silence), skipping some."""

    def __init__(self, kind: str, count: int, skip: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.kind = kind
        self._indices = iter([index for index in range(count) if index not in skip])

    async def recv(self) -> av.VideoFrame | av.AudioFrame:
        index = next(self._indices, None)
        if index is None:
            self.stop()
            raise MediaStreamError
        await asyncio.sleep(0.002)
        if self.kind == "video":
            frame = av.VideoFrame.from_ndarray(np.full((96, 64), 16 + 2 * index, np.uint8), format="yuv420p")
            frame.pts, frame.time_base = index * 3600, Fraction(1, 90_000)
            return frame
        sound = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
        sound.sample_rate, sound.pts, sound.time_base = 48_000, index * 960, Fraction(1, 48_000)
        return sound


def test_a_recording_stays_constant_rate_when_the_session_skips_frames(tmp_path: Path) -> None:
    async def record() -> StreamOutput:
        output = StreamOutput("out", "s", "record", str(tmp_path / "show.mp4"),
                              _Source("video", 100, frozenset({40, 41, 42})), _Source("audio", 200), (64, 64), 25)
        readers: list[asyncio.Task[Any]] = []

        def spawn(coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
            readers.append(asyncio.ensure_future(coroutine))
            return readers[-1]

        output.start(spawn)
        await asyncio.gather(*readers)  # both sources ran dry
        await output.stop()
        return output

    output = asyncio.run(record())
    assert output.video_frames == 97 and output.repeated == 3 and output.state == "stopped"
    with av.open(str(tmp_path / "show.mp4")) as container:
        stream = container.streams.video[0]
        frames = [(round(float(frame.pts * frame.time_base) * 25), int(frame.to_ndarray()[0, 0]))
                  for frame in container.decode(stream)]
    assert [slot for slot, _ in frames] == list(range(100))  # every slot of 25 fps, none missing
    levels = [level for _, level in frames]
    assert abs(levels[41] - levels[39]) <= 2 and abs(levels[42] - levels[39]) <= 2  # the hole repeats frame 39
    assert abs(levels[43] - (16 + 2 * 43)) <= 2  # and the stream goes on with its own frames
    assert ffprobe(str(tmp_path / "show.mp4"))["video"]["avg_frame_rate"] == "25/1"
