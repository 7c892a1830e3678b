"""Enrollment: a video of a person speaking becomes an avatar pack (written atomically).

Audio is decoded first (16 kHz mono for features, 48 kHz for playback). Pass 1 decodes the video at 25 fps
(upright, whatever its rotation metadata), finds every face, follows the subject, spots scene cuts and measures
each face (pose, sharpness, lip contrast). Then every frame gets its flags, the alignment anchors are
One-Euro-smoothed between cuts, and the holdout block, idle segments, base loop, reference and reference bank
are chosen. Pass 2 decodes again to cut the aligned crops, write the base loop and pick contact-sheet frames.

Both streams are decoded through damage, as players do: audio lost to a damaged packet becomes silence of its
length, and the frames whose picture or audio window it spoils are flagged ``damaged``. A file most of whose
audio or video cannot be decoded is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from avatar import align, damage, quality, report
from avatar.audio import FEATURE_RATE_HZ, PLAYBACK_RATE_HZ, VIDEO_FPS, MelSpec, mel_windows
from avatar.damage import VideoDamage
from avatar.landmarks import FaceLandmarker, mouth_opening
from avatar.pack import BASE_VIDEO, SCHEMA_VERSION, PackMeta, expected_shape
from avatar.pose import head_pose
from avatar.track import CutDetector, SubjectTracker, smooth_track
from avatar.video_io import VideoInfo, VideoWriter, check_input_size, decode_audio, iter_frames, probe
from twincast import __version__
from twincast.errors import InputError, UnprocessableError
from twincast.files import atomic_directory, sha256_file

REPORT_FILE = "report.json"
CONTACT_SHEET = "contact_sheet.png"
_THUMB_PX = 32  # side of the grey thumbnails the cut detector compares
FIRST_PASS_SHARE = 0.8  # of enrollment's time (measured: 77 % for 1080p footage, bench.enroll)
Progress = Callable[[float], None]  # told the fraction of the work done, 0..1


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
    base_min_idle_s: float = 3.0  # an idle segment at least this long becomes the base loop
    idle_min_s: float = 1.0
    max_faces: int = 2
    max_yaw_deg: float = 35.0  # away from the clip's median pose
    max_pitch_deg: float = 25.0
    max_roll_deg: float = 30.0
    blur_ratio: float = 0.35  # sharper than this fraction of the clip's median face sharpness
    occlusion_spread: float = 9.0  # a mouth this many robust deviations unlike itself at that opening …
    occlusion_ratio: float = 7.0  # … and this many times the usual difference counts as covered
    jitter_limit: float = 0.15  # landmarks further than this (in eye distances) from the smoothed track
    min_interocular_px: float = 12.0
    cut_settle_frames: int = 2  # frames after a cut also flagged, while the face settles
    reference_bank_size: int = 8
    max_damaged_fraction: float = 0.5  # refuse a file when more of its audio or its video cannot be decoded
    max_input_gb: float = 16.0  # refuse a bigger file (from its size on disk, before anything is read)

    def __post_init__(self) -> None:
        if self.crop_px % 16 or not 32 <= self.crop_px <= 512:
            raise InputError(f"enroll crop_px {self.crop_px} must be a multiple of 16 in 32..512")
        if not 0.3 <= self.mask_top <= 0.8:
            raise InputError(f"enroll mask_top {self.mask_top} must be in 0.3..0.8 (fraction of the crop height)")
        if not 0.0 < self.holdout_fraction <= self.holdout_max_fraction < 1.0:
            raise InputError("enroll holdout_fraction must be in (0, holdout_max_fraction] and that below 1")
        if self.min_usable_s <= 0 or self.base_loop_s <= 0 or self.idle_min_s <= 0:
            raise InputError("enroll min_usable_s, base_loop_s and idle_min_s must be positive")
        if not 1 <= self.max_faces <= 8:
            raise InputError(f"enroll max_faces {self.max_faces} must be in 1..8")
        if not 1 <= self.reference_bank_size <= 64:
            raise InputError(f"enroll reference_bank_size {self.reference_bank_size} must be in 1..64")
        if not 0.0 <= self.max_damaged_fraction < 1.0:
            raise InputError(f"enroll max_damaged_fraction {self.max_damaged_fraction} must be in [0, 1)")
        if not 0.0 < self.max_input_gb <= 1024.0:
            raise InputError(f"enroll max_input_gb {self.max_input_gb} must be in (0, 1024]")


@dataclass(frozen=True)
class EnrollResult:
    """A summary of what enrollment kept."""

    pack: Path
    frame_count: int
    usable_frames: int
    holdout: tuple[int, int]
    base_range: tuple[int, int]
    report: dict[str, Any] = field(default_factory=dict)


def holdout_block(frame_count: int, config: EnrollConfig) -> tuple[int, int]:
    """The last ~10% of the clip (at least ``holdout_min_s`` when the clip is long enough), contiguous."""
    wanted = max(math.ceil(config.holdout_fraction * frame_count), int(config.holdout_min_s * VIDEO_FPS))
    size = min(wanted, int(config.holdout_max_fraction * frame_count))
    size = max(size, 1)
    return frame_count - size, frame_count


def choose_base_range(mouth: np.ndarray, valid: np.ndarray, train_end: int, length: int,
                      idle: list[dict[str, Any]], min_idle: int) -> tuple[int, int]:
    """The base loop: the longest idle segment before the holdout when one is at least ``min_idle`` frames,
    else the longest all-usable stretch (up to ``length``) with the most closed mouth.

    Raises:
        UnprocessableError: no usable stretch of at least a second before the holdout.
    """
    before = [seg for seg in idle if int(seg["end"]) <= train_end and int(seg["end"]) - int(seg["start"]) >= min_idle]
    if before:
        longest = max(before, key=lambda seg: int(seg["end"]) - int(seg["start"]))
        start = int(longest["start"])
        return start, min(int(longest["end"]), start + length)
    best: tuple[int, float, int] | None = None  # (window length, −mouth, start)
    index = 0
    while index < train_end:
        if not valid[index]:
            index += 1
            continue
        end = index
        while end < train_end and valid[end]:
            end += 1
        size = min(length, end - index)
        for start in range(index, end - size + 1, max(1, VIDEO_FPS // 5)):
            candidate = (size, -float(mouth[start : start + size].mean()), start)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        index = end
    if best is None or best[0] < VIDEO_FPS:
        raise UnprocessableError(
            "no stretch of 1.0 s with a usable face in every frame was found before the holdout; "
            "expected the person to stay in view, facing the camera, for the idle loop"
        )
    return best[2], best[2] + best[0]


@dataclass
class _Pass1:
    """What the first pass over the footage found, per 25-fps frame."""

    landmarks: np.ndarray  # (N, 468, 2), NaN where the subject is not in view
    other_dominant: np.ndarray  # (N,) bool
    cuts: np.ndarray  # (N,) bool
    sharpness: np.ndarray  # (N,)
    mouth_patches: np.ndarray  # (N, h, w, 3) float16, the normalised mouth region (zeros without a face)
    interocular: np.ndarray  # (N,)
    pose: np.ndarray  # (N, 3) yaw, pitch, roll in degrees; NaN without a face
    faces_seen: np.ndarray  # (N,) faces found
    damage: VideoDamage  # what decoding met; ``damage.frames`` (N,) marks the frames that show it


def enroll(video: Path, out: Path, config: EnrollConfig | None = None, *, force: bool = False,
           progress: bool = True, write_report: bool = False, on_progress: Progress | None = None) -> EnrollResult:
    """Build an avatar pack at ``out`` from ``video``.

    With ``write_report`` the pack also gets ``report.json`` and ``contact_sheet.png``; ``on_progress``, when
    given, is told the fraction done as frames are decoded (both passes).

    Raises:
        NotFoundError, InputError: the video is missing, empty, bigger than ``max_input_gb``, not a video,
            corrupt or truncated.
        UnprocessableError: no audio track, too little usable footage, no face in most frames, or most of the
            audio or video cannot be decoded.
    """
    config = config or EnrollConfig()
    check_input_size(video, int(config.max_input_gb * 1e9), "enroll max_input_gb")
    info = probe(video)
    if info.audio_rate_hz is None:
        raise UnprocessableError(f"{video} has no audio track; enrollment needs the person's speech")
    audio = decode_audio(video, FEATURE_RATE_HZ, PLAYBACK_RATE_HZ)
    damage.refuse_unreadable_audio(video, audio, config.max_damaged_fraction)
    audio_16k_raw, audio_48k_raw = audio.tracks
    spec = MelSpec()
    with atomic_directory(out, overwrite=force) as tmp:
        found = _first_pass(video, info, config, progress, on_progress)
        frame_count = found.landmarks.shape[0]
        _check_complete(video, info, frame_count)
        has_face = ~np.isnan(found.landmarks[:, 0, 0])
        if has_face.mean() < config.min_face_fraction:
            raise UnprocessableError(
                f"no face in most frames of {video}: the subject's face was found in {int(has_face.sum())} of "
                f"{frame_count} frames ({100 * has_face.mean():.0f}%); expected at least "
                f"{100 * config.min_face_fraction:.0f}%"
            )
        audio_16k = _fit_audio(audio_16k_raw, frame_count, FEATURE_RATE_HZ)
        raw_anchors = np.stack([align.anchor_points(p) if ok else np.zeros((3, 2)) for p, ok in
                                zip(found.landmarks, has_face, strict=True)])
        scale = float(np.median(found.interocular[has_face]))
        anchors = smooth_track(raw_anchors, has_face, found.cuts, VIDEO_FPS, scale)
        mouth = np.array([mouth_opening(p) if ok else 0.0 for p, ok in zip(found.landmarks, has_face, strict=True)],
                         np.float32)
        damaged = found.damage.frames | damage.frames_hearing(audio.damaged_spans_s, frame_count, spec)
        flags = _flags(found, has_face, mouth, raw_anchors, anchors, damaged, config)
        valid = flags == 0
        holdout = holdout_block(frame_count, config)
        usable = int(valid[: holdout[0]].sum())
        if usable < config.min_usable_s * VIDEO_FPS:
            raise UnprocessableError(
                f"{video} has {usable / VIDEO_FPS:.1f} s of usable footage before the holdout block "
                f"({_rejections_text(flags)}); at least {config.min_usable_s:.1f} s is needed"
            )
        blink = np.array([quality.eye_openness(p) if ok else np.nan for p, ok in
                          zip(found.landmarks, has_face, strict=True)], np.float32)
        speech, level = quality.speech_frames(audio_16k, frame_count, FEATURE_RATE_HZ // VIDEO_FPS)
        before_holdout = valid & (np.arange(frame_count) < holdout[0])
        idle = quality.idle_segments(mouth, speech, before_holdout, anchors, fps=VIDEO_FPS, min_s=config.idle_min_s)
        base_range = choose_base_range(mouth, valid, holdout[0], int(config.base_loop_s * VIDEO_FPS), idle,
                                       int(config.base_min_idle_s * VIDEO_FPS))
        template = align.TEMPLATE * config.crop_px
        transforms = np.stack([align.similarity_transform(a, template) for a in anchors]).astype(np.float32)
        train = np.flatnonzero(before_holdout)
        reference = _choose_reference(train, mouth, found.pose)
        features = np.column_stack([np.nan_to_num(found.pose), mouth])
        bank = quality.reference_bank(features, train, reference, config.reference_bank_size)

        sheet_frames = report.sheet_indices(frame_count)
        crops, thumbs = _second_pass(video, transforms, base_range, info, tmp / BASE_VIDEO, config.crop_px,
                                     sheet_frames, progress, on_progress)
        audio_48k = _fit_audio(audio_48k_raw, frame_count, PLAYBACK_RATE_HZ)
        mel = mel_windows(audio_16k, np.arange(frame_count), spec).astype(np.float16)
        arrays = {
            "crops": crops,
            "transforms": transforms,
            "landmarks": found.landmarks,
            "valid": valid,
            "flags": flags,
            "pose": found.pose.astype(np.float32),
            "mouth_open": mouth,
            "blink": blink,
            "speech": speech,
            "mel": mel,
            "audio_16k": audio_16k,
            "audio_48k": np.round(np.clip(audio_48k, -1, 1) * 32767).astype(np.int16),
            "base_transforms": transforms[base_range[0] : base_range[1]],
        }
        summary = report.summarise(
            video=video, info=info, flags=flags, valid=valid, pose=found.pose, holdout=holdout, idle=idle,
            base_range=base_range, reference_bank=bank, speech=speech, level=level, audio=audio_16k,
            faces_seen=found.faces_seen, damage=damage.summary(audio, found.damage),
        )
        damage.warn(video, audio, found.damage, int(np.count_nonzero(damaged)))
        meta = PackMeta(
            schema_version=SCHEMA_VERSION, fps=VIDEO_FPS, frame_count=frame_count, crop_px=config.crop_px,
            mask_top=config.mask_top, frame_width=info.width, frame_height=info.height,
            feature_rate_hz=FEATURE_RATE_HZ, playback_rate_hz=PLAYBACK_RATE_HZ, holdout=holdout,
            base_range=base_range, reference_index=reference, usable_frames=usable,
            source={"name": video.name, "sha256": sha256_file(video), "format": info.format_name,
                    "codec": info.video_codec, "fps": info.fps, "duration_s": info.duration_s,
                    "rotation": info.rotation, "audio_codec": info.audio_codec,
                    "audio_rate_hz": info.audio_rate_hz, "audio_channels": info.audio_channels,
                    "damage": summary["damage"]},
            mel=asdict(spec), created_by=f"twincast {__version__}",
            reference_bank=bank, idle_segments=idle, flag_reasons=list(quality.FLAG_REASONS),
            rejected=summary["rejected_frames"],
        )
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        manifest = {name: {"shape": list(expected_shape(name, meta)), "dtype": str(array.dtype)}
                    for name, array in arrays.items()}
        meta = PackMeta(**{**asdict(meta), "arrays": manifest})
        (tmp / "avatar.json").write_text(meta.to_json())
        if write_report:
            report.write_json(tmp / REPORT_FILE, summary)
            sheet = report.contact_sheet(thumbs, crops, flags, holdout, idle, base_range, title=video.name)
            if not cv2.imwrite(str(tmp / CONTACT_SHEET), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {tmp / CONTACT_SHEET}")
    return EnrollResult(pack=out, frame_count=frame_count, usable_frames=usable, holdout=holdout,
                        base_range=base_range, report=summary)


def _choose_reference(train: np.ndarray, mouth: np.ndarray, pose: np.ndarray) -> int:
    """A frontal training frame with a typical, slightly open mouth: the identity reference."""
    turn = np.abs(np.nan_to_num(pose[train, :2], nan=90.0)).max(axis=1)
    frontal = train[turn <= np.percentile(turn, 50)]
    return int(frontal[np.argsort(mouth[frontal])[int(0.75 * (frontal.size - 1))]])


def _flags(found: _Pass1, has_face: np.ndarray, mouth: np.ndarray, raw_anchors: np.ndarray, anchors: np.ndarray,
           damaged: np.ndarray, config: EnrollConfig) -> np.ndarray:
    """Each frame's rejection reasons as a bit mask (see ``quality.FLAG_REASONS``)."""
    bits = quality.FLAG_BITS
    flags = np.zeros(has_face.shape[0], np.uint8)
    flags[damaged] |= bits["damaged"]
    flags[~has_face] |= bits["no_face"]
    flags[found.other_dominant] |= bits["other_face_dominant"]
    cut_frames = np.flatnonzero(found.cuts)
    for frame in cut_frames:
        flags[frame : frame + 1 + config.cut_settle_frames] |= bits["scene_cut"]
    face = np.flatnonzero(has_face)
    if face.size == 0:
        return flags
    typical = np.nanmedian(found.pose[face], axis=0)  # the person's usual pose: the generic 3-D face biases
    yaw, pitch, roll = np.abs(found.pose[face] - typical).T  # absolute angles, so limits apply to the deviation
    extreme = (yaw > config.max_yaw_deg) | (pitch > config.max_pitch_deg) | (roll > config.max_roll_deg)
    extreme |= np.isnan(found.pose[face]).any(axis=1)
    flags[face[extreme]] |= bits["extreme_pose"]
    blurred = found.sharpness[face] < quality.robust_low(found.sharpness[face], config.blur_ratio)
    flags[face[blurred]] |= bits["motion_blur"]
    covered = quality.occluded_mouths(found.mouth_patches[face], mouth[face], spread=config.occlusion_spread,
                                      ratio=config.occlusion_ratio)
    flags[face[covered]] |= bits["occluded_mouth"]
    interocular = np.maximum(found.interocular[face], 1e-6)
    jitter = np.linalg.norm(raw_anchors[face] - anchors[face], axis=-1).max(axis=1) / interocular
    shaky = (jitter > config.jitter_limit) | (found.interocular[face] < config.min_interocular_px)
    flags[face[shaky]] |= bits["low_confidence"]
    return flags


def _rejections_text(flags: np.ndarray) -> str:
    counts = report.rejected_counts(flags)
    listed = ", ".join(f"{reason} {count}" for reason, count in counts.items() if count)
    return f"frames rejected: {listed}" if listed else "no frame was rejected"


def _check_complete(video: Path, info: VideoInfo, frame_count: int) -> None:
    """Refuse a file whose video stops well before its header says it ends (a cut-off download or copy)."""
    declared = info.video_duration_s or info.duration_s
    decoded = frame_count / VIDEO_FPS
    if declared and decoded < 0.9 * declared - 1.0:
        raise UnprocessableError(
            f"{video} is truncated or corrupt: its header says {declared:.1f} s of video but only "
            f"{decoded:.1f} s could be decoded; expected a complete recording"
        )


def _first_pass(video: Path, info: VideoInfo, config: EnrollConfig, progress: bool,
                on_progress: Progress | None) -> _Pass1:
    """Pass 1: follow the subject through every 25-fps frame and measure their face."""
    expected = max(1, round(info.duration_s * VIDEO_FPS))
    missing = np.full((468, 2), np.nan, np.float32)
    no_patch = np.zeros((quality.MOUTH_BOX[0].stop - quality.MOUTH_BOX[0].start,
                         quality.MOUTH_BOX[1].stop - quality.MOUTH_BOX[1].start, 3), np.float16)
    columns: dict[str, list[Any]] = {name: [] for name in ("landmarks", "other_dominant", "cuts", "sharpness",
                                                           "mouth_patches", "interocular", "pose", "faces_seen")}
    tracker = SubjectTracker((info.width, info.height))
    cut_detector = CutDetector()
    decoding = VideoDamage()
    with FaceLandmarker(video=True, max_faces=config.max_faces) as landmarker:
        frames = iter_frames(video, VIDEO_FPS, decoding)
        for index, rgb in tqdm(frames, total=expected, desc="enroll: faces", unit="frame", disable=not progress):
            if on_progress is not None:
                on_progress(FIRST_PASS_SHARE * min(1.0, index / expected))
            thumb = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (_THUMB_PX, _THUMB_PX),
                               interpolation=cv2.INTER_AREA)
            cut = cut_detector.update(thumb)
            if cut:
                tracker.reset()
            step = tracker.update(landmarker.detect_all(rgb))
            columns["cuts"].append(cut)
            columns["other_dominant"].append(step.other_dominant)
            columns["faces_seen"].append(step.faces)
            if step.subject is None:
                columns["landmarks"].append(missing)
                columns["sharpness"].append(np.nan)
                columns["mouth_patches"].append(no_patch)
                columns["interocular"].append(np.nan)
                columns["pose"].append((np.nan, np.nan, np.nan))
                continue
            measures = quality.measure_face(rgb, step.subject)
            columns["landmarks"].append(step.subject.astype(np.float32))
            columns["sharpness"].append(measures.sharpness)
            columns["mouth_patches"].append(measures.mouth_patch)
            columns["interocular"].append(measures.interocular_px)
            columns["pose"].append(head_pose(step.subject, (info.width, info.height)))
    damage.refuse_unreadable_video(video, decoding, config.max_damaged_fraction, VIDEO_FPS)
    if len(columns["landmarks"]) < VIDEO_FPS:
        raise UnprocessableError(
            f"{video} holds {len(columns['landmarks'])} frames; expected a video of at least a few seconds"
        )
    return _Pass1(
        landmarks=np.stack(columns["landmarks"]),
        other_dominant=np.array(columns["other_dominant"], bool),
        cuts=np.array(columns["cuts"], bool),
        sharpness=np.array(columns["sharpness"], np.float64),
        mouth_patches=np.stack(columns["mouth_patches"]),
        interocular=np.array(columns["interocular"], np.float64),
        pose=np.array(columns["pose"], np.float64),
        faces_seen=np.array(columns["faces_seen"], np.int16),
        damage=decoding,
    )


def _second_pass(video: Path, transforms: np.ndarray, base_range: tuple[int, int], info: VideoInfo,
                 base_path: Path, crop_px: int, sheet_frames: np.ndarray, progress: bool,
                 on_progress: Progress | None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Pass 2: aligned crops of every frame, the base loop's full frames written to ``base_path``, and small
    full-frame thumbnails of the contact-sheet frames."""
    frame_count = transforms.shape[0]
    crops = np.zeros((frame_count, crop_px, crop_px, 3), np.uint8)
    thumbs: dict[int, np.ndarray] = {}
    wanted = set(int(i) for i in sheet_frames)
    width, height = info.width - info.width % 2, info.height - info.height % 2
    with VideoWriter(base_path, width=width, height=height, fps=VIDEO_FPS, crf=12, audio_rate_hz=None) as writer:
        frames = iter_frames(video, VIDEO_FPS)
        for index, rgb in tqdm(frames, total=frame_count, desc="enroll: crops", unit="frame", disable=not progress):
            if index >= frame_count:
                break
            if on_progress is not None:
                on_progress(FIRST_PASS_SHARE + (1 - FIRST_PASS_SHARE) * index / frame_count)
            crops[index] = align.warp_crop(rgb, transforms[index], crop_px)
            if base_range[0] <= index < base_range[1]:
                writer.write(rgb[:height, :width])
            if index in wanted:
                thumbs[index] = report.thumbnail(rgb)
    return crops, thumbs


def _fit_audio(samples: np.ndarray, frame_count: int, rate_hz: int) -> np.ndarray:
    """Trim or zero-pad audio to exactly ``frame_count`` video frames."""
    want = frame_count * (rate_hz // VIDEO_FPS)
    fitted = np.zeros(want, np.float32)
    fitted[: min(want, samples.shape[0])] = samples[:want]
    return fitted
