"""A quick look at footage before anything is built from it, so unusable footage is refused in seconds rather
than after minutes of enrollment (``twincast create`` and the server's Twins page both ask it first).

It reads the headers (a video stream, an audio stream, long enough to learn from and to score), looks for a face
in a few frames spread over the clip, and times enrollment's first pass (decoding + FaceMesh tracking) on the
clip's first frames, which is what an estimate of enrollment's time is made from.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from pathlib import Path

from avatar.audio import VIDEO_FPS
from avatar.enroll import FIRST_PASS_SHARE, EnrollConfig
from avatar.landmarks import FaceLandmarker
from avatar.video_io import VideoInfo, check_input_size, iter_frames, probe, sample_frames
from twincast.errors import UnprocessableError

FACE_SAMPLES = 8  # frames spread over the clip, looked at for a face
TIMED_FRAMES = 40  # consecutive frames from the start, decoded and tracked as enrollment's first pass does
SHORT_FOOTAGE_S = 30.0  # below this a twin is made but sees little of the mouth: said, not refused


@dataclass(frozen=True)
class FootageCheck:
    """What the look found: the headers, the frames with a face among those sampled, and enrollment's speed."""

    info: VideoInfo
    frame_count: int  # at twincast's 25 fps, from the duration
    sampled_s: tuple[float, ...]  # where faces were looked for
    faces_found: int
    first_pass_ms_per_frame: float  # decoding + FaceMesh tracking, measured on the first frames

    @property
    def enroll_estimate_s(self) -> float:
        """Seconds enrollment should take: its first pass at the measured speed, the second pass in proportion
        (``avatar.enroll.FIRST_PASS_SHARE``)."""
        return self.frame_count * self.first_pass_ms_per_frame / 1000 / FIRST_PASS_SHARE

    @property
    def warnings(self) -> list[str]:
        """What will work but not well, in words."""
        duration = self.frame_count / VIDEO_FPS
        if duration < SHORT_FOOTAGE_S:
            return [f"the footage is {duration:.0f} s long: the twin learns from every frame but sees few mouth "
                    "shapes; a minute or more of speech gives a better twin"]
        return []


def minimum_duration_s(config: EnrollConfig) -> float:
    """The shortest footage enrollment accepts: ``min_usable_s`` to learn from, plus the holdout block after it
    (at most ``holdout_max_fraction`` of the clip) that scores the twin."""
    return config.min_usable_s / (1.0 - config.holdout_max_fraction)


def check_headers(video: Path, config: EnrollConfig | None = None) -> VideoInfo:
    """What the container's headers say, refused when enrollment would refuse it: a file that is not a video,
    has no audio track or is too short. Fast: no frame is decoded but the first.

    Raises:
        NotFoundError, InputError: missing, empty, too big, not a video, corrupt.
        UnprocessableError: no audio track, or shorter than ``minimum_duration_s``.
    """
    config = config or EnrollConfig()
    check_input_size(video, int(config.max_input_gb * 1e9), "enroll max_input_gb")
    info = probe(video)
    if info.audio_rate_hz is None:
        raise UnprocessableError(f"{video.name} has no audio track; a twin learns its mouth from the person's "
                                 "speech, so the video needs its sound")
    duration_s = info.video_duration_s or info.duration_s
    shortest = minimum_duration_s(config)
    if duration_s < shortest:
        raise UnprocessableError(f"{video.name} is {duration_s:.1f} s long; a twin needs at least {shortest:.1f} s "
                                 f"({config.min_usable_s:.1f} s to learn from and a block held out to score it), "
                                 "and a minute or more of speech gives a good one")
    return info


def check_footage(video: Path, config: EnrollConfig | None = None, *, samples: int = FACE_SAMPLES) -> FootageCheck:
    """Look at ``video`` and refuse it now if enrollment would.

    Raises:
        NotFoundError, InputError: missing, empty, too big, not a video, corrupt.
        UnprocessableError: no audio track, too short, or no face in most of the sampled frames.
    """
    config = config or EnrollConfig()
    info = check_headers(video, config)
    duration_s = info.video_duration_s or info.duration_s
    times_s = tuple(round((index + 0.5) * duration_s / samples, 2) for index in range(samples))
    pictures = sample_frames(video, list(times_s))
    with FaceLandmarker(video=False, max_faces=1) as landmarker:
        faces = [(at, landmarker.detect(rgb) is not None) for at, rgb in pictures]
    found = sum(face for _, face in faces)
    if found < math.ceil(config.min_face_fraction * samples):
        missing = [f"{at:.1f} s" for at, face in faces if not face]
        raise UnprocessableError(
            f"no face in most of {video.name}: a face was found in {found} of {samples} frames looked at "
            f"(none at {', '.join(missing) or 'the frames that would not decode'}); expected the person's face, "
            "facing the camera, in view most of the time")
    return FootageCheck(info=info, frame_count=max(1, round(duration_s * VIDEO_FPS)), sampled_s=times_s,
                        faces_found=found, first_pass_ms_per_frame=_time_first_pass(video, config))


def _time_first_pass(video: Path, config: EnrollConfig) -> float:
    """Milliseconds per frame to decode and track the clip's first ``TIMED_FRAMES`` frames, as enrollment does."""
    with FaceLandmarker(video=True, max_faces=config.max_faces) as landmarker:
        frames = itertools.islice(iter_frames(video, VIDEO_FPS), TIMED_FRAMES)
        first = next(frames, None)
        if first is None:
            return 0.0
        landmarker.detect_all(first[1])  # the graph's first call sets it up: not a frame's cost
        started = time.perf_counter()
        count = 0
        for _, rgb in frames:
            landmarker.detect_all(rgb)
            count += 1
    return 1000 * (time.perf_counter() - started) / max(1, count)
