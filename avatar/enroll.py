"""Enrollment: a video of a person speaking becomes an avatar pack (written atomically).

Pass 1 decodes the video at 25 fps and finds face landmarks; the alignment anchors are smoothed over time and
the holdout block, reference frame and base loop are chosen. Pass 2 decodes again to cut the aligned crops and
write the base loop. Audio is decoded at 16 kHz for features and 48 kHz for playback.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from avatar import align
from avatar.audio import FEATURE_RATE_HZ, PLAYBACK_RATE_HZ, VIDEO_FPS, MelSpec, mel_windows
from avatar.landmarks import FaceLandmarker, mouth_opening
from avatar.pack import BASE_VIDEO, SCHEMA_VERSION, PackMeta, expected_shape
from avatar.video_io import VideoInfo, VideoWriter, iter_frames, probe, read_audio
from twincast import __version__
from twincast.errors import InputError, UnprocessableError
from twincast.files import atomic_directory, sha256_file


@dataclass(frozen=True)
class EnrollConfig:
    """Enrollment settings."""

    crop_px: int = 128
    mask_top: float = 0.55
    holdout_fraction: float = 0.10
    holdout_min_s: float = 5.0
    holdout_max_fraction: float = 0.25
    min_usable_s: float = 2.0
    min_face_fraction: float = 0.5
    base_loop_s: float = 8.0

    def __post_init__(self) -> None:
        if self.crop_px % 16 or not 32 <= self.crop_px <= 512:
            raise InputError(f"enroll crop_px {self.crop_px} must be a multiple of 16 in 32..512")
        if not 0.3 <= self.mask_top <= 0.8:
            raise InputError(f"enroll mask_top {self.mask_top} must be in 0.3..0.8 (fraction of the crop height)")
        if not 0.0 < self.holdout_fraction <= self.holdout_max_fraction < 1.0:
            raise InputError("enroll holdout_fraction must be in (0, holdout_max_fraction] and that below 1")
        if self.min_usable_s <= 0 or self.base_loop_s <= 0:
            raise InputError("enroll min_usable_s and base_loop_s must be positive")


@dataclass(frozen=True)
class EnrollResult:
    """A summary of what enrollment kept."""

    pack: Path
    frame_count: int
    usable_frames: int
    holdout: tuple[int, int]
    base_range: tuple[int, int]


def holdout_block(frame_count: int, config: EnrollConfig) -> tuple[int, int]:
    """The last ~10% of the clip (at least ``holdout_min_s`` when the clip is long enough), contiguous."""
    wanted = max(math.ceil(config.holdout_fraction * frame_count), int(config.holdout_min_s * VIDEO_FPS))
    size = min(wanted, int(config.holdout_max_fraction * frame_count))
    size = max(size, 1)
    return frame_count - size, frame_count


def smooth_anchors(anchors: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Centred 3-frame mean of the alignment anchors over valid neighbours; invalid frames copy the nearest."""
    smoothed = anchors.copy()
    count = anchors.shape[0]
    for index in np.flatnonzero(valid):
        window = [j for j in (index - 1, index, index + 1) if 0 <= j < count and valid[j]]
        smoothed[index] = anchors[window].mean(axis=0)
    valid_index = np.flatnonzero(valid)
    if valid_index.size:
        for index in np.flatnonzero(~valid):
            nearest = valid_index[np.argmin(np.abs(valid_index - index))]
            smoothed[index] = smoothed[nearest]
    return smoothed


def choose_base_range(mouth: np.ndarray, valid: np.ndarray, train_end: int, length: int) -> tuple[int, int]:
    """The contiguous all-valid window before the holdout with the most closed mouth (the idle loop)."""
    length = max(1, min(length, train_end))
    best: tuple[float, int] | None = None
    for start in range(0, train_end - length + 1, max(1, VIDEO_FPS // 5)):
        window = slice(start, start + length)
        if not valid[window].all():
            continue
        score = float(mouth[window].mean())
        if best is None or score < best[0]:
            best = (score, start)
    if best is None:
        raise UnprocessableError(
            f"no stretch of {length / VIDEO_FPS:.1f} s with a face in every frame was found before the holdout; "
            "expected the person to stay in view for the idle loop"
        )
    return best[1], best[1] + length


def enroll(video: Path, out: Path, config: EnrollConfig | None = None, *, force: bool = False,
           progress: bool = True) -> EnrollResult:
    """Build an avatar pack at ``out`` from ``video``.

    Raises:
        NotFoundError, InputError: the video is missing, not a video, or undecodable.
        UnprocessableError: no audio track, too little usable footage, or no face in most frames.
    """
    config = config or EnrollConfig()
    info = probe(video)
    if info.audio_rate_hz is None:
        raise UnprocessableError(f"{video} has no audio track; enrollment needs the person's speech")
    with atomic_directory(out, overwrite=force) as tmp:
        landmarks = _find_landmarks(video, info, progress)
        frame_count = landmarks.shape[0]
        valid = ~np.isnan(landmarks[:, 0, 0])
        if valid.mean() < config.min_face_fraction:
            raise UnprocessableError(
                f"no face in most frames of {video}: a face was found in {int(valid.sum())} of {frame_count} frames "
                f"({100 * valid.mean():.0f}%); expected at least {100 * config.min_face_fraction:.0f}%"
            )
        holdout = holdout_block(frame_count, config)
        usable = int(valid[: holdout[0]].sum())
        if usable < config.min_usable_s * VIDEO_FPS:
            raise UnprocessableError(
                f"{video} has {usable / VIDEO_FPS:.1f} s of usable footage before the holdout block; "
                f"at least {config.min_usable_s:.1f} s is needed"
            )
        mouth = np.array([mouth_opening(p) if ok else 0.0 for p, ok in zip(landmarks, valid, strict=True)],
                         np.float32)
        anchors = np.stack([align.anchor_points(p) if ok else np.zeros((3, 2)) for p, ok in
                            zip(landmarks, valid, strict=True)])
        anchors = smooth_anchors(anchors, valid)
        template = align.TEMPLATE * config.crop_px
        transforms = np.stack([align.similarity_transform(a, template) for a in anchors]).astype(np.float32)
        base_range = choose_base_range(mouth, valid, holdout[0], int(config.base_loop_s * VIDEO_FPS))
        train = np.flatnonzero(valid[: holdout[0]])
        reference = int(train[np.argsort(mouth[train])[int(0.75 * (train.size - 1))]])

        crops = _cut_crops(video, transforms, base_range, info, tmp / BASE_VIDEO, config.crop_px, progress)
        audio_16k = _fit_audio(read_audio(video, FEATURE_RATE_HZ), frame_count, FEATURE_RATE_HZ)
        audio_48k = _fit_audio(read_audio(video, PLAYBACK_RATE_HZ), frame_count, PLAYBACK_RATE_HZ)
        spec = MelSpec()
        mel = mel_windows(audio_16k, np.arange(frame_count), spec).astype(np.float16)
        arrays = {
            "crops": crops,
            "transforms": transforms,
            "landmarks": landmarks,
            "valid": valid,
            "mouth_open": mouth,
            "mel": mel,
            "audio_16k": audio_16k,
            "audio_48k": np.round(np.clip(audio_48k, -1, 1) * 32767).astype(np.int16),
            "base_transforms": transforms[base_range[0] : base_range[1]],
        }
        meta = PackMeta(
            schema_version=SCHEMA_VERSION, fps=VIDEO_FPS, frame_count=frame_count, crop_px=config.crop_px,
            mask_top=config.mask_top, frame_width=info.width, frame_height=info.height,
            feature_rate_hz=FEATURE_RATE_HZ, playback_rate_hz=PLAYBACK_RATE_HZ, holdout=holdout,
            base_range=base_range, reference_index=reference, usable_frames=usable,
            source={"name": video.name, "sha256": sha256_file(video), "format": info.format_name,
                    "codec": info.video_codec, "fps": info.fps, "duration_s": info.duration_s},
            mel=asdict(spec), created_by=f"twincast {__version__}",
        )
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        manifest = {name: {"shape": list(expected_shape(name, meta)), "dtype": str(array.dtype)}
                    for name, array in arrays.items()}
        meta = PackMeta(**{**asdict(meta), "arrays": manifest})
        (tmp / "avatar.json").write_text(meta.to_json())
    return EnrollResult(pack=out, frame_count=frame_count, usable_frames=usable, holdout=holdout,
                        base_range=base_range)


def _find_landmarks(video: Path, info: VideoInfo, progress: bool) -> np.ndarray:
    """Pass 1: landmarks of every 25-fps frame, NaN where no face was found; shape (N, 468, 2)."""
    expected = max(1, round(info.duration_s * VIDEO_FPS))
    found: list[np.ndarray] = []
    missing = np.full((468, 2), np.nan, np.float32)
    with FaceLandmarker(video=True) as landmarker:
        frames = iter_frames(video, VIDEO_FPS)
        for _, rgb in tqdm(frames, total=expected, desc="enroll: landmarks", unit="frame", disable=not progress):
            points = landmarker.detect(rgb)
            found.append(points if points is not None else missing)
    if len(found) < VIDEO_FPS:
        raise UnprocessableError(f"{video} holds {len(found)} frames; expected a video of at least a few seconds")
    return np.stack(found)


def _cut_crops(video: Path, transforms: np.ndarray, base_range: tuple[int, int], info: VideoInfo,
               base_path: Path, crop_px: int, progress: bool) -> np.ndarray:
    """Pass 2: aligned crops of every frame, and the base loop's full frames written to ``base_path``."""
    frame_count = transforms.shape[0]
    crops = np.zeros((frame_count, crop_px, crop_px, 3), np.uint8)
    width, height = info.width - info.width % 2, info.height - info.height % 2
    with VideoWriter(base_path, width=width, height=height, fps=VIDEO_FPS, crf=12, audio_rate_hz=None) as writer:
        frames = iter_frames(video, VIDEO_FPS)
        for index, rgb in tqdm(frames, total=frame_count, desc="enroll: crops", unit="frame", disable=not progress):
            if index >= frame_count:
                break
            crops[index] = align.warp_crop(rgb, transforms[index], crop_px)
            if base_range[0] <= index < base_range[1]:
                writer.write(rgb[:height, :width])
    return crops


def _fit_audio(samples: np.ndarray, frame_count: int, rate_hz: int) -> np.ndarray:
    """Trim or zero-pad audio to exactly ``frame_count`` video frames."""
    want = frame_count * (rate_hz // VIDEO_FPS)
    fitted = np.zeros(want, np.float32)
    fitted[: min(want, samples.shape[0])] = samples[:want]
    return fitted
