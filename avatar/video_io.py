"""Reading and writing footage with PyAV: constant-rate RGB frames in, H.264 + AAC mp4 out.

Decoding goes through damage as players do (see ``avatar.damage``): a packet that will not decode is counted and
skipped, audio lost with it becomes silence of its duration (so what follows keeps its timestamps), and the video
frames it spoils are reported for the caller to flag.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import numpy as np

from avatar.audio import PLAYBACK_RATE_HZ
from avatar.damage import AudioAssembler, DecodedAudio, PictureLog, VideoDamage, decode_packet
from twincast.errors import InputError, NotFoundError, UnprocessableError

_STILL_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif"}


@dataclass(frozen=True)
class VideoInfo:
    """What a footage file holds, read from its container headers."""

    path: Path
    format_name: str
    width: int
    height: int
    fps: float
    duration_s: float
    video_codec: str
    audio_rate_hz: int | None
    audio_channels: int | None
    audio_codec: str | None = None
    rotation: int = 0  # degrees counter-clockwise the frames are turned for display; width/height are after it
    video_duration_s: float | None = None  # the video stream's own duration, when the container records it


def check_input_size(path: Path, max_bytes: int, setting: str) -> int:
    """The size of the footage file ``path`` in bytes, from the file system alone: a file that says it is huge
    (a sparse file, a device) is refused without reading any of it.

    Raises:
        NotFoundError: the file does not exist.
        InputError: not a regular file, empty, or over ``max_bytes`` (``setting`` names the limit).
    """
    if not path.exists():
        raise NotFoundError(f"video {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file; expected a video file such as an mp4")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path} is empty (0 bytes); expected a video file such as an mp4")
    if size > max_bytes:
        raise InputError(f"{path} is {size / 1e9:.1f} GB, over the {max_bytes / 1e9:g} GB limit ({setting}); "
                         "cut the footage to the few minutes enrollment needs")
    return size


def _open(path: Path) -> Any:
    if not path.exists():
        raise NotFoundError(f"video {path} does not exist")
    if not path.is_file():
        raise InputError(f"{path} is not a file; expected a video file such as an mp4")
    try:
        return av.open(str(path))
    except av.error.FFmpegError as exc:
        raise InputError(f"{path} is not a readable video ({exc.strerror or exc}): it is corrupt, truncated or "
                         "not a video; expected an mp4/mov/mkv/webm/avi recording") from exc


def _first_picture(path: Path, container: Any, stream: Any) -> Any:
    """The first frame of ``stream`` that decodes, going past damaged packets."""
    error = None
    try:
        for packet in container.demux(stream):
            frames, error = decode_packet(packet)
            if frames:
                return frames[0]
    except av.error.FFmpegError as exc:
        raise InputError(f"{path}: its video stream cannot be read ({exc}); the file is corrupt") from exc
    reason = f" ({error})" if error else ""
    raise InputError(f"{path}: its video stream holds no decodable frame{reason}; the file is corrupt or empty")


def _upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Turn a decoded frame as its display matrix says (a phone's portrait recording stands up)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def probe(path: Path) -> VideoInfo:
    """Read the container headers of ``path``.

    Raises:
        NotFoundError: the file does not exist.
        InputError: not a video container, or a still image.
    """
    with _open(path) as container:
        format_name = container.format.name
        if format_name in _STILL_IMAGE_FORMATS or not container.streams.video:
            kind = "a still image" if container.streams.video else "audio only, with no video stream"
            raise InputError(f"{path} is {kind} (format {format_name}); expected a video of a person speaking")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate or Fraction(0)
        duration_s = 0.0
        if container.duration:
            duration_s = container.duration / av.time_base
        elif video.duration and video.time_base:
            duration_s = float(video.duration * video.time_base)
        audio = container.streams.audio[0] if container.streams.audio else None
        video_duration_s = float(video.duration * video.time_base) if video.duration and video.time_base else None
        if video.frames and rate:  # the header's frame count: an AVI cut short still declares its whole length
            video_duration_s = max(video_duration_s or 0.0, float(video.frames / rate))
        first = _first_picture(path, container, video)
        rotation = int(round(first.rotation or 0)) % 360
        width, height = video.codec_context.width, video.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        return VideoInfo(
            path=path,
            format_name=format_name,
            width=width,
            height=height,
            fps=float(rate),
            duration_s=duration_s,
            video_codec=video.codec_context.name,
            audio_rate_hz=audio.codec_context.sample_rate if audio else None,
            audio_channels=audio.codec_context.channels if audio else None,
            audio_codec=audio.codec_context.name if audio else None,
            rotation=rotation,
            video_duration_s=video_duration_s,
        )


def iter_frames(path: Path, fps: int, damage: VideoDamage | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode ``path`` to RGB frames resampled to a constant ``fps`` by presentation time.

    Output frame *n* shows the source frame nearest in time to n / fps (the earlier one on a tie), so variable
    and higher or lower source rates all map to one clock without a systematic delay. Frames are turned upright
    per their rotation metadata. Packets that will not decode are skipped as players skip them: the output
    still spans the stream's timeline, a lost stretch showing the nearest picture that did decode. ``damage``,
    when given, is filled in after the last frame: which output frames show damage, and how much there was.

    Raises:
        InputError: the container cannot be read.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pictures = PictureLog(stream.average_rate or stream.guessed_rate)
        next_index = 0
        previous: np.ndarray | None = None
        previous_s = 0.0
        start: float | None = None
        try:
            for packet in container.demux(stream):
                frames, error = decode_packet(packet)
                pictures.sent(packet, error)
                for frame in frames:
                    if frame.pts is None or frame.time_base is None:
                        continue
                    time_s = float(frame.pts * frame.time_base)
                    pictures.came_out(frame, time_s)
                    if start is None:
                        start = time_s
                        if pictures.errors:  # pictures lost before the first one that decoded keep their place
                            start = min([start, *pictures.sent_times_s()])
                    rgb = _upright(frame.to_ndarray(format="rgb24"), int(round(frame.rotation or 0)))
                    while previous is not None and start + next_index / fps < time_s - 1e-6:
                        target_s = start + next_index / fps
                        earlier = target_s - previous_s <= time_s - target_s + 1e-6
                        pictures.showed(target_s, previous_s if earlier else time_s)
                        yield next_index, previous if earlier else rgb
                        next_index += 1
                    previous, previous_s = rgb, time_s
        except av.error.FFmpegError as exc:
            raise InputError(f"{path} could not be read at output frame {next_index}: {exc}") from exc
        if previous is not None and start is not None:
            last_lost_s = pictures.last_lost_s()  # pictures lost at the end keep their place
            end_s = previous_s if last_lost_s is None else max(previous_s, last_lost_s)
            while True:
                pictures.showed(start + next_index / fps, previous_s)
                yield next_index, previous
                next_index += 1
                if start + next_index / fps > end_s + 1e-6:
                    break
        if damage is not None:
            pictures.report(damage)


def sample_frames(path: Path, times_s: list[float]) -> list[tuple[float, np.ndarray]]:
    """The pictures shown at each of ``times_s`` (seconds from the start), upright, as (time, RGB) pairs: each
    found by seeking to the keyframe before it and decoding forward, so a few frames of a long clip cost a few
    seeks, not a decode of the whole file. A time past the end, or a stretch that does not decode, is left out.

    Raises:
        InputError: the container cannot be read.
    """
    found: list[tuple[float, np.ndarray]] = []
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.time_base is None:
            return found
        start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        try:
            for wanted_s in sorted(times_s):
                container.seek(int((start_s + wanted_s) / stream.time_base), stream=stream, backward=True)
                picture = _picture_at(container, stream, start_s + wanted_s)
                if picture is not None:
                    found.append((wanted_s, picture))
        except av.error.FFmpegError as exc:
            raise InputError(f"{path} could not be read while sampling frames: {exc}") from exc
    return found


def _picture_at(container: Any, stream: Any, time_s: float) -> np.ndarray | None:
    """Decode from the current position to the first picture at or after ``time_s`` (its own clock)."""
    for packet in container.demux(stream):
        frames, _ = decode_packet(packet)
        for frame in frames:
            if frame.pts is not None and float(frame.pts * frame.time_base) >= time_s - 0.02:
                return _upright(frame.to_ndarray(format="rgb24"), int(round(frame.rotation or 0)))
    return None


def read_audio(path: Path, sample_rate_hz: int) -> np.ndarray:
    """Decode the first audio stream of ``path`` to mono float32 at ``sample_rate_hz`` (see ``decode_audio``).

    Raises:
        UnprocessableError: the file has no audio stream or it holds no samples.
    """
    return decode_audio(path, sample_rate_hz).tracks[0]


def read_audio_rates(path: Path, *rates_hz: int) -> list[np.ndarray]:
    """Decode the first audio stream of ``path`` once, to mono float32 at each of ``rates_hz`` (see
    ``decode_audio``).

    Raises:
        UnprocessableError: the file has no audio stream or it holds no samples.
    """
    return list(decode_audio(path, *rates_hz).tracks)


def decode_audio(path: Path, *rates_hz: int) -> DecodedAudio:
    """Decode the first audio stream of ``path`` once, through damage, to mono float32 at each of ``rates_hz``.

    Raises:
        UnprocessableError: the file has no audio stream, or no packet of it decodes.
        InputError: the container cannot be read.
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise UnprocessableError(f"{path} has no audio track; enrollment needs the person's speech")
        stream = container.streams.audio[0]
        start_s = float(stream.start_time * stream.time_base) if stream.start_time is not None else None
        assembler = AudioAssembler(rates_hz, start_s)
        try:
            for packet in container.demux(stream):
                frames, error = decode_packet(packet)
                assembler.sent(packet, error)
                for frame in frames:
                    assembler.add(frame)
            decoded = assembler.finish()
        except av.error.FFmpegError as exc:
            raise InputError(f"{path}: audio could not be read: {exc}") from exc
    if not decoded.tracks[0].size:
        if decoded.damaged_packets:
            raise UnprocessableError(f"{path}: none of its {decoded.packets} audio packets could be decoded "
                                     f"({decoded.first_error}); the audio track is corrupt")
        raise UnprocessableError(f"{path}: the audio track holds no samples")
    return decoded


class VideoWriter:
    """Write RGB frames and mono float audio to an H.264 (yuv420p) + AAC mp4.

    Audio is interleaved per video frame, so the file plays and seeks well.
    """

    def __init__(self, path: Path, *, width: int, height: int, fps: int, crf: int = 18,
                 audio_rate_hz: int | None = PLAYBACK_RATE_HZ) -> None:
        if width % 2 or height % 2:
            raise InputError(f"video size {width}x{height} must be even for yuv420p")
        self._container = av.open(str(path), mode="w", format="mp4")
        self._video = self._container.add_stream("libx264", rate=fps)
        self._video.width, self._video.height, self._video.pix_fmt = width, height, "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "veryfast", "g": str(2 * fps)}
        self._audio: Any = None
        self._audio_rate_hz = audio_rate_hz
        self._audio_pts = 0
        if audio_rate_hz:
            self._audio = self._container.add_stream("aac", rate=audio_rate_hz, layout="mono")
        self._frames = 0
        self._fps = fps

    def write(self, rgb: np.ndarray, audio: np.ndarray | None = None) -> None:
        """Append one frame and (optionally) the audio that plays during it."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self._frames
        self._frames += 1
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        if audio is not None and self._audio is not None and audio.size:
            self.write_audio(audio)

    def write_audio(self, audio: np.ndarray) -> None:
        """Append mono float audio in [-1, 1]."""
        chunk = np.clip(audio, -1.0, 1.0).astype(np.float32).reshape(1, -1)
        aframe = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
        aframe.sample_rate = self._audio_rate_hz or PLAYBACK_RATE_HZ
        aframe.pts = self._audio_pts
        self._audio_pts += chunk.shape[1]
        for packet in self._audio.encode(aframe):
            self._container.mux(packet)

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        for packet in self._video.encode(None):
            self._container.mux(packet)
        if self._audio is not None:
            for packet in self._audio.encode(None):
                self._container.mux(packet)
        self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self._container.close()


def read_video_frames(path: Path) -> np.ndarray:
    """Decode every frame of a short clip (such as a pack's base loop) to an RGB array (N, H, W, 3)."""
    frames = [rgb for _, rgb in iter_frames(path, fps=max(1, math.ceil(probe(path).fps)))]
    if not frames:
        raise InputError(f"{path} holds no video frames")
    return np.stack(frames)
