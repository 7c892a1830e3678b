"""Synthetic talking-head footage from one still portrait and espeak-ng speech.

Tests and the demo need footage with a known truth. The portrait's landmarks drive a smooth warp: the jaw
and lower lip drop with the speech envelope (and a dark mouth cavity with teeth opens between the lips),
the upper lids close for blinks, and the whole head sways slightly. The sidecar records the true per-frame
mouth opening, blinks and head motion.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from avatar import landmarks as lm
from avatar.audio import PLAYBACK_RATE_HZ, PLAYBACK_SAMPLES_PER_FRAME, VIDEO_FPS, resample, split_frames
from avatar.speech import Voice, split_sentences, synthesize
from avatar.video_io import VideoWriter
from twincast.errors import InputError, NotFoundError, UnprocessableError
from twincast.files import atomic_path, atomic_write_bytes, sha256_file

DEFAULT_PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portrait.png"
DEFAULT_TEXT = (
    "Hello, and welcome to the stream. Today I have something special to show you. "
    "This jacket is light, warm and completely waterproof. It folds into its own pocket, so you can "
    "take it anywhere. We have it in four colours, and every size is in stock right now. "
    "If you order in the next ten minutes, shipping is free. Tell me in the chat which colour you like best. "
    "Let me answer a few questions while you decide. Yes, it is machine washable. "
    "No, it does not make noise when you walk. Thank you all for watching, and see you next time."
)


@dataclass(frozen=True)
class SynthConfig:
    """How the synthetic clip looks and moves."""

    size_px: int = 384
    fps: int = VIDEO_FPS
    seed: int = 0
    lead_silence_s: float = 1.0
    tail_silence_s: float = 1.0
    gap_silence_s: tuple[float, float] = (0.5, 1.1)
    jaw_drop: float = 0.38  # full opening, as a fraction of the distance between the eyes
    head_sway_deg: float = 1.5
    head_sway_frac: float = 0.008  # translation, as a fraction of the output size
    blink_every_s: tuple[float, float] = (2.2, 4.5)
    framing: float = 2.5  # output square side, in face heights (forehead to chin)
    voice: Voice = field(default_factory=Voice)

    def __post_init__(self) -> None:
        if self.size_px < 64 or self.size_px % 2:
            raise InputError(f"synth size_px {self.size_px} must be an even number ≥ 64")
        if self.fps != VIDEO_FPS:
            raise InputError(f"synth fps {self.fps}: twincast footage runs at {VIDEO_FPS} fps")
        if not 0.0 < self.jaw_drop <= 1.0:
            raise InputError(f"synth jaw_drop {self.jaw_drop} must be in (0, 1]")


@dataclass(frozen=True)
class SynthResult:
    """Where the clip and its truth sidecar were written, and what they hold."""

    video: Path
    sidecar: Path
    frame_count: int
    duration_s: float


def load_portrait(path: Path) -> np.ndarray:
    """Read a portrait image as RGB uint8.

    Raises:
        NotFoundError: missing file.
        InputError: not a decodable image.
    """
    if not path.is_file():
        raise NotFoundError(f"portrait {path} does not exist")
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(f"portrait {path} is not a readable image; expected a PNG or JPEG photo")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def build_speech(text: str, config: SynthConfig) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentence-by-sentence espeak-ng speech with silent gaps, at 48 kHz; also each sentence's (start, end) s."""
    rng = np.random.default_rng(config.seed)
    pieces = [np.zeros(int(config.lead_silence_s * PLAYBACK_RATE_HZ), np.float32)]
    spans = []
    cursor = pieces[0].shape[0]
    sentences = split_sentences(text)
    for index, sentence in enumerate(sentences):
        speech = synthesize(sentence, config.voice)
        samples = resample(speech.samples, speech.sample_rate_hz, PLAYBACK_RATE_HZ)
        spans.append((cursor / PLAYBACK_RATE_HZ, (cursor + samples.shape[0]) / PLAYBACK_RATE_HZ))
        pieces.append(samples)
        cursor += samples.shape[0]
        last = index == len(sentences) - 1
        gap_s = config.tail_silence_s if last else float(rng.uniform(*config.gap_silence_s))
        pieces.append(np.zeros(int(gap_s * PLAYBACK_RATE_HZ), np.float32))
        cursor += pieces[-1].shape[0]
    return np.concatenate(pieces), spans


def mouth_signal(frames_audio: np.ndarray) -> np.ndarray:
    """Per-frame mouth opening in [0, 1] from the loudness of each frame's audio (fast attack, slow release)."""
    rms = np.sqrt(np.mean(np.square(frames_audio, dtype=np.float64), axis=1))
    level_db = 20 * np.log10(np.maximum(rms, 1e-6))
    voiced = level_db > -50
    if not voiced.any():
        return np.zeros(frames_audio.shape[0], np.float32)
    peak_db = float(np.percentile(level_db[voiced], 90))
    raw = np.clip((level_db - (peak_db - 28.0)) / 28.0, 0.0, 1.0) ** 0.8
    smooth = np.zeros_like(raw)
    state = 0.0
    for index, target in enumerate(raw):
        rate = 0.75 if target > state else 0.45
        state += rate * (target - state)
        smooth[index] = state
    return smooth.astype(np.float32)


def blink_signal(frame_count: int, config: SynthConfig) -> np.ndarray:
    """Per-frame eyelid closure in [0, 1]: 5-frame blinks at random intervals."""
    rng = np.random.default_rng(config.seed + 1)
    shape = np.array([0.35, 0.8, 1.0, 0.7, 0.3], np.float32)
    closure = np.zeros(frame_count, np.float32)
    position = float(rng.uniform(0.8, config.blink_every_s[0])) * config.fps
    while position + shape.size < frame_count:
        start = int(position)
        closure[start : start + shape.size] = shape
        position += float(rng.uniform(*config.blink_every_s)) * config.fps
    return closure


def head_motion(frame_count: int, config: SynthConfig) -> np.ndarray:
    """Per-frame (angle_deg, dx_frac, dy_frac): slow, smooth sways of incommensurate periods."""
    rng = np.random.default_rng(config.seed + 2)
    seconds = np.arange(frame_count) / config.fps
    phases = rng.uniform(0, 2 * np.pi, size=6)
    angle = config.head_sway_deg * (0.7 * np.sin(2 * np.pi * seconds / 6.3 + phases[0])
                                    + 0.3 * np.sin(2 * np.pi * seconds / 2.9 + phases[1]))
    dx = config.head_sway_frac * (0.7 * np.sin(2 * np.pi * seconds / 5.1 + phases[2])
                                  + 0.3 * np.sin(2 * np.pi * seconds / 2.3 + phases[3]))
    dy = config.head_sway_frac * (0.6 * np.sin(2 * np.pi * seconds / 4.4 + phases[4])
                                  + 0.4 * np.sin(2 * np.pi * seconds / 3.7 + phases[5]))
    return np.stack([angle, dx, dy], axis=1).astype(np.float32)


def _shepard_field(shape: tuple[int, int], centres: np.ndarray, moves: np.ndarray, sigma_px: float) -> np.ndarray:
    """Dense displacement (H, W, 2) interpolating ``moves`` at ``centres`` with normalised Gaussian weights.

    A constant background weight makes the field fade to zero away from every control point.
    """
    height, width = shape
    step = 4  # evaluate on a coarse grid, then upsample: the field is smooth by construction
    ys, xs = np.mgrid[0:height:step, 0:width:step].astype(np.float32)
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    distance2 = ((grid[:, None, :] - centres[None, :, :].astype(np.float32)) ** 2).sum(axis=2)
    weights = np.exp(-distance2 / (2 * sigma_px**2))
    background = math.exp(-2.0)
    coarse = (weights @ moves.astype(np.float32)) / (weights.sum(axis=1, keepdims=True) + background)
    coarse = coarse.reshape(ys.shape[0], ys.shape[1], 2)
    return cv2.resize(coarse, (width, height), interpolation=cv2.INTER_LINEAR)


class PortraitRig:
    """The portrait with unit warp fields for the mouth and the blink, built once from its landmarks."""

    def __init__(self, portrait: np.ndarray, points: np.ndarray, config: SynthConfig) -> None:
        self.image = portrait
        self.points = points
        left, right = lm.eye_centres(points)
        self.interocular_px = float(np.linalg.norm(right - left))
        self.jaw_px = config.jaw_drop * self.interocular_px
        shape = portrait.shape[:2]
        self.mouth_field = self._mouth_field(shape)
        self.blink_field = self._blink_field(shape)
        height, width = shape
        self._grid = np.dstack(np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)))

    def _mouth_field(self, shape: tuple[int, int]) -> np.ndarray:
        pts = self.points
        moving: dict[int, float] = {}
        mouth_x = float(pts[list(lm.MOUTH_CORNERS), 0].mean())
        mouth_half = max(1.0, float(np.ptp(pts[list(lm.MOUTH_CORNERS), 0])) / 2)
        for index in lm.LOWER_LIP_OUTER + lm.LOWER_LIP_INNER:
            # The lip opens most at its centre and little at the corners, as real mouths do.
            across = min(1.0, abs(float(pts[index, 0]) - mouth_x) / mouth_half)
            moving[index] = 0.35 + 0.65 * (1.0 - across**2)
        for index in lm.UPPER_LIP_OUTER + lm.UPPER_LIP_INNER:
            moving[index] = -0.08
        for index in lm.MOUTH_CORNERS:
            moving[index] = 0.35
        chin_x = pts[lm.CHIN, 0]
        half_width = max(1.0, float(np.ptp(pts[list(lm.JAW), 0])) / 2)
        for index in lm.JAW:
            moving[index] = 0.9 * max(0.0, 1.0 - abs(float(pts[index, 0] - chin_x)) / half_width) ** 0.7
        nose_y = pts[lm.NOSE_TIP, 1]
        fixed = [i for i in range(pts.shape[0]) if pts[i, 1] < nose_y + 0.1 * self.interocular_px and i not in moving]
        cheek_line = pts[lm.CHIN, 1] - 0.8 * self.interocular_px
        fixed += [i for i in lm.FACE_OVAL if i not in moving and i not in lm.JAW and pts[i, 1] < cheek_line]
        centres = np.concatenate([pts[list(moving)], pts[fixed], _border_points(shape, 8)])
        moves = np.zeros((centres.shape[0], 2), np.float32)
        moves[: len(moving), 1] = np.array(list(moving.values())) * self.jaw_px
        return _shepard_field(shape, centres, moves, sigma_px=0.28 * self.interocular_px)

    def _blink_field(self, shape: tuple[int, int]) -> np.ndarray:
        pts = self.points
        upper = list(lm.LEFT_UPPER_LID + lm.RIGHT_UPPER_LID)
        lower = [i for i in lm.LEFT_EYE + lm.RIGHT_EYE if i not in upper]
        gaps = []
        for eye, lid in ((lm.LEFT_EYE, lm.LEFT_UPPER_LID), (lm.RIGHT_EYE, lm.RIGHT_UPPER_LID)):
            lids = [i for i in eye if i not in lid]
            gaps.append(float(pts[lids, 1].max() - pts[list(lid), 1].min()))
        eye_height = max(1.0, float(np.mean(gaps)))
        brow = np.array(pts[upper]) - np.array([0.0, 0.35 * self.interocular_px])
        centres = np.concatenate([pts[upper], pts[lower], brow, _border_points(shape, 6)])
        moves = np.zeros((centres.shape[0], 2), np.float32)
        moves[: len(upper), 1] = 1.2 * eye_height
        return _shepard_field(shape, centres, moves, sigma_px=0.09 * self.interocular_px)

    def pose(self, opening: float, closure: float) -> np.ndarray:
        """The portrait with the mouth opened by ``opening`` and the eyes closed by ``closure`` (both 0..1)."""
        forward = opening * self.mouth_field + closure * self.blink_field
        # Backward map for remap: solve q + F(q) = p by fixed-point iteration (F is smooth and small).
        source: np.ndarray = self._grid - forward
        for _ in range(2):
            displaced = cv2.remap(forward, source[..., 0], source[..., 1], cv2.INTER_LINEAR)
            source = self._grid - displaced
        warped = cv2.remap(self.image, source[..., 0], source[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT101)
        if opening > 0.02:
            self._paint_cavity(warped, opening)
        return warped

    def _paint_cavity(self, image: np.ndarray, opening: float) -> None:
        """Darken the gap between the moved inner lips and show the upper teeth."""
        pts = self.points
        upper = [pts[i] + opening * self.mouth_field[int(pts[i, 1]), int(pts[i, 0])] for i in lm.UPPER_LIP_INNER]
        lower = [pts[i] + opening * self.mouth_field[int(pts[i, 1]), int(pts[i, 0])] for i in lm.LOWER_LIP_INNER]
        polygon = np.array(upper + lower[::-1], np.float32)
        scale = 4  # draw at sub-pixel precision
        x0, y0 = np.floor(polygon.min(axis=0)).astype(int) - 4
        x1, y1 = np.ceil(polygon.max(axis=0)).astype(int) + 4
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, image.shape[1]), min(y1, image.shape[0])
        if x1 <= x0 or y1 <= y0:
            return
        local = ((polygon - (x0, y0)) * scale).astype(np.int32)
        cavity = np.zeros(((y1 - y0) * scale, (x1 - x0) * scale), np.uint8)
        cv2.fillPoly(cavity, [local], 255, lineType=cv2.LINE_AA)
        teeth = np.zeros_like(cavity)
        gap = float(np.linalg.norm(lower[4] - upper[5]))
        upper_line = (np.array(upper, np.float32) - (x0, y0)) * scale
        shifted = upper_line + np.array([0.0, 0.38 * gap * scale], np.float32)
        cv2.fillPoly(teeth, [np.concatenate([upper_line, shifted[::-1]]).astype(np.int32)], 255,
                     lineType=cv2.LINE_AA)
        cavity = cv2.resize(cavity, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        teeth = cv2.resize(teeth, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        teeth = np.minimum(teeth, cavity)
        strength = min(1.0, opening * 2.5)
        region = image[y0:y1, x0:x1].astype(np.float32)
        dark = np.array([62, 22, 28], np.float32)
        ivory = np.array([226, 218, 206], np.float32)
        region += (strength * cavity)[..., None] * (dark - region)
        region += (strength * teeth)[..., None] * (ivory - region)
        image[y0:y1, x0:x1] = np.clip(region + 0.5, 0, 255).astype(np.uint8)


def _border_points(shape: tuple[int, int], per_side: int) -> np.ndarray:
    height, width = shape
    xs = np.linspace(0, width - 1, per_side)
    ys = np.linspace(0, height - 1, per_side)
    return np.concatenate([
        np.stack([xs, np.zeros_like(xs)], 1), np.stack([xs, np.full_like(xs, height - 1)], 1),
        np.stack([np.zeros_like(ys), ys], 1), np.stack([np.full_like(ys, width - 1), ys], 1),
    ]).astype(np.float32)


def framing_matrix(points: np.ndarray, image_shape: tuple[int, int], config: SynthConfig,
                   motion: np.ndarray) -> np.ndarray:
    """2x3 matrix from portrait pixels to output pixels: a square around the face, swayed by ``motion``."""
    face_height = float(np.linalg.norm(points[lm.CHIN] - points[lm.FOREHEAD_TOP]))
    side = min(config.framing * face_height, float(min(image_shape)))
    centre = points[lm.NOSE_TIP].astype(np.float64)
    centre[0] = np.clip(centre[0], side / 2, image_shape[1] - side / 2)
    centre[1] = np.clip(centre[1], side / 2, image_shape[0] - side / 2)
    angle_deg, dx, dy = (float(v) for v in motion)
    scale = config.size_px / side
    rotation = cv2.getRotationMatrix2D((float(points[lm.NOSE_TIP, 0]), float(points[lm.NOSE_TIP, 1])), angle_deg, 1.0)
    to_output = np.array([[scale, 0, config.size_px / 2 - scale * centre[0] + dx * config.size_px],
                          [0, scale, config.size_px / 2 - scale * centre[1] + dy * config.size_px]])
    return to_output @ np.vstack([rotation, [0, 0, 1]])


def synth_footage(portrait_path: Path, text: str, out: Path, config: SynthConfig | None = None,
                  *, progress: bool = True) -> SynthResult:
    """Render a talking-head clip of the portrait speaking ``text`` and its truth sidecar (``out`` with .json).

    Raises:
        NotFoundError, InputError: the portrait is missing or not an image; ``out`` is not an .mp4 path.
        UnprocessableError: the text is empty, or no face is found in the portrait.
    """
    config = config or SynthConfig()
    if out.suffix.lower() != ".mp4":
        raise InputError(f"--out {out} must end in .mp4")
    portrait = load_portrait(portrait_path)
    sentences = split_sentences(text)  # refuses empty text before any work
    with lm.FaceLandmarker(video=False) as landmarker:
        points = landmarker.detect(portrait)
    if points is None:
        raise UnprocessableError(f"no face found in portrait {portrait_path}; expected a clear frontal face photo")
    audio, spans = build_speech(" ".join(sentences), config)
    frames_audio = split_frames(audio, PLAYBACK_SAMPLES_PER_FRAME)
    frame_count = frames_audio.shape[0]
    opening = mouth_signal(frames_audio)
    closure = blink_signal(frame_count, config)
    motion = head_motion(frame_count, config)
    rig = PortraitRig(portrait, points, config)
    size = config.size_px
    jaw_out_px = []
    with atomic_path(out) as tmp, VideoWriter(tmp, width=size, height=size, fps=config.fps) as writer:
        for index in tqdm(range(frame_count), desc="synth-footage", unit="frame", disable=not progress):
            posed = rig.pose(float(opening[index]), float(closure[index]))
            matrix = framing_matrix(points, portrait.shape[:2], config, motion[index])
            frame = cv2.warpAffine(posed, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT101)
            writer.write(frame, frames_audio[index])
            jaw_out_px.append(float(opening[index] * rig.jaw_px * abs(np.linalg.det(matrix[:, :2])) ** 0.5))
    sidecar = out.with_suffix(".json")
    truth = {
        "fps": config.fps,
        "frame_count": frame_count,
        "size_px": size,
        "audio_rate_hz": PLAYBACK_RATE_HZ,
        "duration_s": frame_count / config.fps,
        "text": " ".join(sentences),
        "sentences_s": spans,
        "mouth_open": [round(float(v), 4) for v in opening],
        "jaw_drop_px": [round(v, 2) for v in jaw_out_px],
        "blink": [round(float(v), 3) for v in closure],
        "head_motion": {"angle_deg": motion[:, 0].round(3).tolist(), "dx_frac": motion[:, 1].round(4).tolist(),
                        "dy_frac": motion[:, 2].round(4).tolist()},
        "portrait_sha256": sha256_file(portrait_path),
        "config": asdict(config),
    }
    atomic_write_bytes(sidecar, json.dumps(truth, indent=1).encode())
    return SynthResult(video=out, sidecar=sidecar, frame_count=frame_count, duration_s=frame_count / config.fps)
