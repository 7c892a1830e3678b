"""Decoding through damage, as players do: what a damaged packet costs, and where.

A packet that will not decode is counted and skipped. The audio it held becomes silence of its length
(``AudioAssembler``), so what follows keeps its timestamps. The pictures it spoils are traced to the output frames
that show them (``PictureLog`` → ``VideoDamage``). Enrollment flags those frames (and the frames whose audio
window hears the silence) and refuses a file that is mostly damaged.
"""

from __future__ import annotations

import bisect
import logging
import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from avatar.audio import MelSpec
from twincast.errors import UnprocessableError

_MICROS = 1_000_000  # picture timestamps are compared as whole microseconds

log = logging.getLogger(__name__)


def decode_packet(packet: Any) -> tuple[list[Any], str | None]:
    """Decode one packet: its frames, or none and the decoder's complaint when the packet's data is damaged.

    Running out of memory is the machine's trouble, not the file's, and is raised.
    """
    try:
        return list(packet.decode()), None
    except MemoryError:
        raise
    except av.error.FFmpegError as exc:
        return [], str(exc.strerror or exc)


def micros(seconds: float) -> int:
    """A time in whole microseconds."""
    return round(seconds * _MICROS)


def _distance(sorted_values: list[int], value: int) -> float:
    """How far ``value`` is from the nearest of ``sorted_values`` (infinite when there are none)."""
    at = bisect.bisect_left(sorted_values, value)
    near = sorted_values[max(0, at - 1) : at + 1]
    return float(min(abs(value - other) for other in near)) if near else math.inf


@dataclass
class VideoDamage:
    """What decoding a video stream met; ``iter_frames`` fills it in once it has yielded its last frame.

    A picture is *lost* when its packet would not decode (no frame came out with its timestamp) and *concealed*
    when the decoder patched it over and marked it corrupt. The pictures predicted from those, up to the next
    keyframe, are wrong too: all of these are *spoiled*. An output frame is damaged when it shows a spoiled
    picture, or stands nearer to one than to the picture it shows (a lost picture leaves a neighbour in its
    place).
    """

    pictures: int = 0  # packets with a timestamp: one picture each
    decode_errors: int = 0
    lost_pictures: int = 0
    concealed_pictures: int = 0
    spoiled_pictures: int = 0
    first_error: str | None = None
    frames: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per output frame: damaged

    @property
    def readable_fraction(self) -> float:
        """The share of the stream that decoded cleanly: of its pictures, and of the output frames (the lesser)."""
        pictures = 1.0 - self.spoiled_pictures / self.pictures if self.pictures else 1.0
        return min(pictures, 1.0 - float(self.frames.mean()) if self.frames.size else 1.0)


class PictureLog:
    """One video decode's bookkeeping: packets in decode order, the pictures that came out, and what each output
    frame showed. Timestamps are whole microseconds of the stream's clock."""

    def __init__(self, rate: Fraction | None) -> None:
        self._interval = _MICROS / float(rate) if rate else 0.0  # between pictures, by the stream's frame rate
        self._packets: list[tuple[int, bool]] = []  # (timestamp, keyframe)
        self._decoded: set[int] = set()
        self._concealed: set[int] = set()
        self._shown: list[tuple[int, int]] = []  # per output frame: (its own time, the shown picture's time)
        self.errors = 0
        self.first_error: str | None = None

    def sent(self, packet: Any, error: str | None) -> None:
        """A packet went to the decoder (``error``: its complaint, if any; with frame threads it may belong to an
        earlier packet, so pictures are traced by timestamp, not by which call failed)."""
        if packet.size and packet.pts is not None and packet.time_base is not None:
            self._packets.append((micros(float(packet.pts * packet.time_base)), packet.is_keyframe))
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or error

    def came_out(self, frame: Any, time_s: float) -> None:
        """A picture came out of the decoder."""
        self._decoded.add(micros(time_s))
        if frame.is_corrupt:
            self._concealed.add(micros(time_s))
            self.first_error = self.first_error or "a picture the decoder marked corrupt"

    def sent_times_s(self) -> list[float]:
        """The timestamps of the packets sent so far, in seconds."""
        return [pts / _MICROS for pts, _ in self._packets]

    def showed(self, at_s: float, picture_s: float) -> None:
        """An output frame at ``at_s`` shows the picture of ``picture_s``."""
        self._shown.append((micros(at_s), micros(picture_s)))

    def last_lost_s(self) -> float | None:
        """The timestamp of the last lost picture, if any: the output runs at least that far."""
        lost, _ = self._trace()
        return max(lost) / _MICROS if lost else None

    def _trace(self) -> tuple[list[int], set[int]]:
        """The lost pictures' timestamps, and those of every spoiled picture (see ``VideoDamage``)."""
        if not self.errors and not self._concealed:
            return [], set()
        decoded = sorted(self._decoded)
        # A timestamp half a picture away from a decoded one is a field of an interlaced picture, not a lost picture.
        lost = [pts for pts, _ in self._packets
                if pts not in self._decoded and _distance(decoded, pts) > 0.6 * self._interval]
        broken = set(lost) | self._concealed
        spoiled: set[int] = set()
        spoiling = False
        for pts, keyframe in self._packets:
            if keyframe and pts not in broken:
                spoiling = False  # a clean keyframe predicts from nothing before it
            spoiling = spoiling or pts in broken
            if spoiling:
                spoiled.add(pts)
        return lost, spoiled

    def report(self, damage: VideoDamage) -> None:
        """Fill in ``damage`` from what was decoded and shown."""
        lost, spoiled = self._trace()
        times = sorted(spoiled)
        frames = np.zeros(len(self._shown), bool)
        for index, (at, shown) in enumerate(self._shown):
            frames[index] = shown in spoiled or _distance(times, at) < abs(shown - at)
        damage.pictures = len(self._packets)
        damage.decode_errors = self.errors
        damage.lost_pictures = len(lost)
        damage.concealed_pictures = len(self._concealed)
        damage.spoiled_pictures = len(spoiled)
        damage.first_error = self.first_error
        damage.frames = frames


@dataclass(frozen=True)
class DecodedAudio:
    """An audio stream decoded through damage: mono float32 at each requested rate, and what was lost.

    Audio that could not be decoded (a packet the decoder refused, or a frame it marked corrupt) is silence of
    the lost duration, so everything after it keeps its place on the timeline.
    """

    tracks: tuple[np.ndarray, ...]  # one per requested rate, in that order
    rates_hz: tuple[int, ...]
    damaged_spans_s: tuple[tuple[float, float], ...] = ()  # silenced stretches, in seconds from the first sample
    packets: int = 0
    damaged_packets: int = 0
    first_error: str | None = None

    @property
    def duration_s(self) -> float:
        """Length of the decoded track, silence included."""
        return self.tracks[0].shape[0] / self.rates_hz[0]

    @property
    def damaged_s(self) -> float:
        """Seconds of silence put in place of damaged audio."""
        return sum(end - start for start, end in self.damaged_spans_s)


class AudioAssembler:
    """Decoded audio frames resampled to each rate, with silence where packets were lost or frames corrupt."""

    def __init__(self, rates_hz: tuple[int, ...], start_s: float | None) -> None:
        self._rates_hz = rates_hz
        self._start_s = start_s  # where the stream's presentation starts (encoder priming before it is dropped)
        self._resamplers = [av.AudioResampler(format="flt", layout="mono", rate=rate) for rate in rates_hz]
        self._chunks: list[list[np.ndarray]] = [[] for _ in rates_hz]
        self._spans: list[tuple[float, float]] = []
        self._origin_s: float | None = None  # the stream time of the first output sample
        self._fed_s = 0.0  # seconds fed to the resamplers
        self._lost = 0  # packets lost since the last frame …
        self._lost_s = 0.0  # … and how long, by their own durations
        self._template: Any = None  # the last decoded frame: the format silence is made in
        self.packets = 0
        self.damaged = 0
        self.first_error: str | None = None

    def sent(self, packet: Any, error: str | None) -> None:
        """A packet went to the decoder; with ``error`` it would not decode, and silence goes in its place."""
        self.packets += bool(packet.size)
        if error is None:
            return
        self.damaged += 1
        self.first_error = self.first_error or error
        self._lost += 1
        if packet.duration and packet.time_base is not None:
            self._lost_s += float(packet.duration * packet.time_base)
        if self._origin_s is None and packet.pts is not None and packet.time_base is not None:
            # Lost before anything decoded: the track starts here, or where the stream's presentation starts.
            floor_s = -math.inf if self._start_s is None else self._start_s
            self._origin_s = max(float(packet.pts * packet.time_base), floor_s)

    def add(self, frame: Any) -> None:
        """A decoded frame, after the silence of what was lost before it.

        How much went missing is the gap in timestamps; where the clock is finer than a frame and the gap is
        within a tick of whole frames (a millisecond clock rounds 21.33 ms frames), it is whole frames. Without a
        timestamp, the lost packets' own durations say it.
        """
        time_s = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base is not None else None
        if self._origin_s is None:
            self._origin_s = time_s or 0.0
        if self._lost:
            gap_s = self._lost_s
            if time_s is not None:
                gap_s = time_s - (self._origin_s + self._fed_s)
                frame_s, tick_s = frame.samples / frame.sample_rate, float(frame.time_base)
                if tick_s < frame_s / 2 and abs(gap_s - self._lost * frame_s) <= 1.5 * tick_s:
                    gap_s = self._lost * frame_s
            self._silence(frame, gap_s)
            self._lost, self._lost_s = 0, 0.0
        if frame.is_corrupt:
            self.damaged += 1
            self.first_error = self.first_error or "a frame the decoder marked corrupt"
            self._silence(frame, frame.samples / frame.sample_rate)
        else:
            self._feed(frame)
        self._template = frame

    def finish(self) -> DecodedAudio:
        """Silence for packets lost at the end, then the resamplers' tails."""
        if self._lost and self._template is not None:
            frame_s = self._template.samples / self._template.sample_rate
            self._silence(self._template, self._lost_s or self._lost * frame_s)
        for resampler, into in zip(self._resamplers, self._chunks, strict=True):
            into.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        tracks = [np.concatenate(into).astype(np.float32) if into else np.zeros(0, np.float32)
                  for into in self._chunks]
        return DecodedAudio(tracks=tuple(tracks), rates_hz=self._rates_hz, damaged_spans_s=tuple(self._spans),
                            packets=self.packets, damaged_packets=self.damaged, first_error=self.first_error)

    def _silence(self, like: Any, seconds: float) -> None:
        samples = round(seconds * like.sample_rate)
        if samples <= 0:
            return
        silent = av.AudioFrame(format=like.format.name, layout=like.layout.name, samples=samples)
        for plane in silent.planes:
            plane.update(bytes(plane.buffer_size))
        silent.sample_rate = like.sample_rate
        if like.time_base is not None:
            silent.time_base = like.time_base
            silent.pts = round(((self._origin_s or 0.0) + self._fed_s) / like.time_base)
        self._spans.append((self._fed_s, self._fed_s + samples / like.sample_rate))
        self._feed(silent)

    def _feed(self, frame: Any) -> None:
        for resampler, into in zip(self._resamplers, self._chunks, strict=True):
            into.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
        self._fed_s += frame.samples / frame.sample_rate


def frames_hearing(spans_s: tuple[tuple[float, float], ...], frame_count: int, spec: MelSpec) -> np.ndarray:
    """Frames whose mel window reaches into any of ``spans_s`` (silence put in place of damaged audio): their
    sound no longer matches their mouth."""
    centres = np.arange(frame_count) * spec.samples_per_frame + spec.samples_per_frame // 2
    first = centres + int(spec.offsets().min())
    last = centres + int(spec.offsets().max()) + spec.n_fft
    hearing = np.zeros(frame_count, bool)
    for start_s, end_s in spans_s:
        hearing |= (first < end_s * spec.sample_rate_hz) & (last > start_s * spec.sample_rate_hz)
    return hearing


def _expected(max_damaged_fraction: float) -> str:
    return (f"expected at least {100 * (1 - max_damaged_fraction):.0f}% of it to decode (a few damaged packets are "
            "decoded through, as players do)")


def refuse_unreadable_audio(video: Path, audio: DecodedAudio, max_damaged_fraction: float) -> None:
    """Refuse a file more than ``max_damaged_fraction`` of whose audio cannot be decoded.

    Raises:
        UnprocessableError: naming how much was readable and what is expected.
    """
    if audio.damaged_s > max_damaged_fraction * audio.duration_s:
        readable_s = audio.duration_s - audio.damaged_s
        raise UnprocessableError(
            f"{video} is mostly unreadable: {100 * readable_s / audio.duration_s:.0f}% of its audio could be decoded "
            f"({readable_s:.1f} s of {audio.duration_s:.1f} s; {audio.damaged_packets} of {audio.packets} packets "
            f"damaged, first: {audio.first_error}); {_expected(max_damaged_fraction)}"
        )


def refuse_unreadable_video(video: Path, damage: VideoDamage, max_damaged_fraction: float, fps: int) -> None:
    """Refuse a file more than ``max_damaged_fraction`` of whose video cannot be decoded.

    Raises:
        UnprocessableError: naming how much was readable and what is expected.
    """
    if damage.readable_fraction < 1.0 - max_damaged_fraction:
        raise UnprocessableError(
            f"{video} is mostly unreadable: {100 * damage.readable_fraction:.0f}% of its video could be decoded "
            f"({damage.pictures - damage.spoiled_pictures} of its {damage.pictures} video pictures, "
            f"{int(damage.frames.size - damage.frames.sum())} of {damage.frames.size} frames at {fps} fps; "
            f"{damage.decode_errors} decode errors, first: {damage.first_error}); {_expected(max_damaged_fraction)}"
        )


def warn(video: Path, audio: DecodedAudio, damage: VideoDamage, flagged: int) -> None:
    """Say what was decoded through, as a player reports its decode errors."""
    found = []
    if damage.frames.any():
        found.append(f"{int(damage.frames.sum())} video frames show pictures that did not decode cleanly")
    if audio.damaged_packets:
        found.append(f"{audio.damaged_packets} audio packets did not decode ({audio.damaged_s:.2f} s silenced)")
    if found:
        log.warning("%s is damaged: %s; %d frames are flagged damaged (first error: %s)", video, "; ".join(found),
                    flagged, damage.first_error or audio.first_error)


def summary(audio: DecodedAudio, video: VideoDamage) -> dict[str, Any]:
    """The report's account of the damage: audio silenced in place of damaged packets, and video frames showing
    spoiled pictures (lost or concealed by the decoder, or predicted from such a picture before the next
    keyframe)."""
    return {
        "video_frames": int(np.count_nonzero(video.frames)),
        "video_pictures_lost": video.lost_pictures,
        "video_pictures_concealed": video.concealed_pictures,
        "video_pictures_spoiled": video.spoiled_pictures,
        "video_pictures": video.pictures,
        "audio_packets": audio.damaged_packets,
        "audio_s": round(audio.damaged_s, 3),
        "audio_spans_s": [[round(start, 3), round(end, 3)] for start, end in audio.damaged_spans_s],
        "audio_packets_total": audio.packets,
        "first_error": video.first_error or audio.first_error,
    }
