"""Re-encode the synthetic clip with the faults real recordings have: rotation metadata, other frame rates,
variable frame timing, 44.1 kHz stereo audio, other containers, edited pictures (faces, cuts, blur), and
damaged packets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avatar.audio import PLAYBACK_RATE_HZ, resample
from avatar.video_io import iter_frames, read_audio


def decode(clip: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """The clip's 25-fps RGB frames and its 48 kHz mono audio."""
    return [rgb for _, rgb in iter_frames(clip, 25)], read_audio(clip, PLAYBACK_RATE_HZ)


def encode(path: Path, frames: Sequence[np.ndarray], times_s: Sequence[float], audio: np.ndarray, *,
           rotation: int = 0, audio_rate_hz: int = PLAYBACK_RATE_HZ, channels: int = 1,
           container_format: str | None = None) -> Path:
    """Write RGB frames at the given presentation times (millisecond clock, so any rate or jitter) and audio.

    ``rotation`` is stored as display metadata only: the frames must already be turned the other way.
    """
    with av.open(str(path), mode="w", format=container_format) as container:
        video = container.add_stream("libx264", rate=1000)
        height, width = frames[0].shape[:2]
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.time_base = Fraction(1, 1000)
        video.codec_context.time_base = Fraction(1, 1000)
        video.options = {"crf": "16", "preset": "veryfast"}
        if rotation:
            video.set_display_rotation(rotation)
        layout = "stereo" if channels == 2 else "mono"
        sound = container.add_stream("aac", rate=audio_rate_hz, layout=layout)
        for rgb, time_s in zip(frames, times_s, strict=True):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = round(time_s * 1000)
            frame.time_base = Fraction(1, 1000)
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        samples = resample(audio, PLAYBACK_RATE_HZ, audio_rate_hz)
        planes = np.stack([samples, 0.5 * samples]) if channels == 2 else samples[None]
        block = 1024
        for start in range(0, planes.shape[1], block):
            chunk = np.ascontiguousarray(planes[:, start : start + block], np.float32)
            aframe = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            aframe.sample_rate = audio_rate_hz
            aframe.pts = start
            for packet in sound.encode(aframe):
                container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)
    return path


def at_rate(frames: Sequence[np.ndarray], fps: float) -> tuple[list[np.ndarray], list[float]]:
    """Resample 25-fps frames to ``fps``: each new instant shows the frame nearest to it in time."""
    duration = len(frames) / 25
    count = int(duration * fps)
    times = [index / fps for index in range(count)]
    return [frames[min(len(frames) - 1, round(t * 25))] for t in times], times


def place(canvas_hw: tuple[int, int], layers: Sequence[tuple[np.ndarray, int, int]],
          background: int = 90) -> np.ndarray:
    """A canvas with each (image, x, y) pasted on it, later layers on top."""
    canvas = np.full((*canvas_hw, 3), background, np.uint8)
    for image, x, y in layers:
        height, width = image.shape[:2]
        visible = image[: max(0, canvas_hw[0] - y), : max(0, canvas_hw[1] - x)]
        canvas[y : y + visible.shape[0], x : x + visible.shape[1]] = visible
    return canvas


def lag_of_best_match(truth: np.ndarray, measured: np.ndarray, reach: int = 4) -> tuple[int, float]:
    """The shift of ``measured`` (in frames) that correlates best with ``truth``, and that correlation."""
    count = min(len(truth), len(measured))
    best = (0, -1.0)
    for lag in range(-reach, reach + 1):
        a = truth[max(0, -lag) : count - max(0, lag)]
        b = measured[max(0, lag) : count - max(0, -lag)]
        correlation = float(np.corrcoef(a, b)[0, 1])
        if correlation > best[1]:
            best = (lag, correlation)
    return best


def encode_camera(path: Path, frames: Sequence[np.ndarray], audio: np.ndarray, *, video_codec: str = "libx264",
                  audio_codec: str = "aac", keyframe_s: float = 1.0) -> Path:
    """Write 25-fps frames and 48 kHz stereo audio as a camera does: constant rate, a keyframe every
    ``keyframe_s``, the container chosen by the file name (mpeg4 + ac3 in avi like a consumer camera, h264 +
    aac in mp4 or mkv like a phone)."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream(video_codec, rate=25)
        height, width = frames[0].shape[:2]
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.codec_context.gop_size = round(keyframe_s * 25)
        if video_codec == "libx264":
            video.options = {"crf": "18", "preset": "veryfast"}
        else:
            video.bit_rate = 1_500_000
        sound = container.add_stream(audio_codec, rate=PLAYBACK_RATE_HZ, layout="stereo")
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = index
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        planes = np.stack([audio, 0.5 * audio]).astype(np.float32)
        block = sound.codec_context.frame_size or 1024
        for start in range(0, planes.shape[1], block):
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, start : start + block]), format="fltp",
                                                layout="stereo")
            aframe.sample_rate = PLAYBACK_RATE_HZ
            aframe.pts = start
            for packet in sound.encode(aframe):
                container.mux(packet)
        for packet in sound.encode(None):
            container.mux(packet)
    return path


@dataclass(frozen=True)
class StoredPacket:
    """Where one packet's payload lies in a file, and what it holds."""

    offset: int  # the payload's first byte
    size: int
    time_s: float
    keyframe: bool


def stored_packets(path: Path, kind: str) -> list[StoredPacket]:
    """The packets of the first ``kind`` ("audio" or "video") stream, in file order, located in the file's bytes.

    A demuxer's ``packet.pos`` is where the packet's chunk or block starts; its payload follows a few bytes of
    header (none in mp4), so it is looked for there.
    """
    data = path.read_bytes()
    found = []
    with av.open(str(path)) as container:
        stream = getattr(container.streams, kind)[0]
        for packet in container.demux(stream):
            if not packet.size or packet.pos is None or packet.pos < 0 or packet.pts is None:
                continue
            payload = bytes(packet)
            offset = data.find(payload, packet.pos, packet.pos + packet.size + 64)
            if offset >= 0:
                found.append(StoredPacket(offset, packet.size, float(packet.pts * packet.time_base),
                                          packet.is_keyframe))
    return found


def overwrite(path: Path, packets: Sequence[StoredPacket], seed: int = 0) -> None:
    """Replace the payloads of ``packets`` in ``path`` with random bytes, as a bad sector or a dropped radio
    link leaves them; the container around them is untouched."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for packet in packets:
        data[packet.offset : packet.offset + packet.size] = rng.integers(0, 256, packet.size, np.uint8).tobytes()
    path.write_bytes(bytes(data))
