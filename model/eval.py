"""``twincast eval``: the quality report of a run on its pack's holdout block.

Every variant renders each holdout frame from that frame's own masked crop (its true head pose and upper
face), the pack's reference crop and the frame's audio window, with one fixed noise (as the live loop does).
Variants: the teacher at 25 and 2 Euler steps, the student at 2 and 1 steps, and the regression baseline.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
from tqdm import tqdm

from avatar.audio import PLAYBACK_RATE_HZ, PLAYBACK_SAMPLES_PER_FRAME
from avatar.pack import AvatarPack
from model.checkpoint import available_roles, load_checkpoint
from model.metrics import lagged_correlation, mouth_box, mouth_cavity_share, psnr, sharpness_ratio, ssim
from model.networks import TwinDenoiser
from model.renderer import TwinRenderer
from twincast.errors import NotFoundError, UnprocessableError
from twincast.files import atomic_path, atomic_write_bytes

# variant name → (checkpoint role, sampler steps), in report order
VARIANTS: dict[str, tuple[str, int]] = {
    "teacher_25": ("teacher", 25),
    "teacher_2": ("teacher", 2),
    "student_2": ("student", 2),
    "student_1": ("student", 1),
    "baseline_1": ("baseline", 1),
}
SIDE_BY_SIDE = ("teacher_25", "student_2", "student_1", "baseline_1")
TIMING_FRAMES = 8


@dataclass(frozen=True)
class EvalInputs:
    """The holdout block, ready for the networks."""

    indices: np.ndarray
    truth: np.ndarray  # (N, C, C, 3) uint8
    masked: torch.Tensor  # (N, 3, C, C) in [-1, 1]
    reference: torch.Tensor  # (1, 3, C, C)
    mel: torch.Tensor  # (N, 80, 16)
    audio: np.ndarray  # float32 playback audio of the block


def load_holdout(pack: AvatarPack, limit: int | None = None) -> EvalInputs:
    """The pack's holdout frames (those with a face) and their conditions."""
    indices = pack.holdout_indices()
    if limit:
        indices = indices[:limit]
    if indices.size < 8:
        raise UnprocessableError(f"avatar pack {pack.root} has {indices.size} holdout frames; eval needs ≥ 8")
    crops = np.asarray(pack.array("crops"))
    truth = crops[indices]

    def to_model(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)

    start, end = int(indices[0]), int(indices[-1]) + 1
    audio = np.asarray(pack.array("audio_48k")[start * PLAYBACK_SAMPLES_PER_FRAME: end * PLAYBACK_SAMPLES_PER_FRAME])
    return EvalInputs(
        indices=indices, truth=truth, masked=to_model(truth), reference=to_model(pack.reference_crop()[None]),
        mel=torch.from_numpy(np.asarray(pack.array("mel")[indices], np.float32)),
        audio=audio.astype(np.float32) / 32767.0,
    )


def render(network: TwinDenoiser, inputs: EvalInputs, steps: int, batch: int = 16) -> np.ndarray:
    """Render every holdout frame with ``steps`` sampler steps and one fixed noise; returns (N, C, C, 3) uint8."""
    frames = []
    device = next(network.parameters()).device
    noise = torch.randn(network.noise_shape(1), generator=torch.Generator().manual_seed(0)).to(device)
    renderer = TwinRenderer(network, steps)  # the sampler unrolled exactly as the exported graph runs it
    with torch.inference_mode():
        for first in range(0, len(inputs.indices), batch):
            masked = inputs.masked[first:first + batch].to(device)
            count = masked.shape[0]
            faces = renderer(masked, inputs.reference.to(device).expand(count, -1, -1, -1),
                             inputs.mel[first:first + batch].to(device), noise.expand(count, -1, -1, -1)).float()
            frames.append(((faces.permute(0, 2, 3, 1) + 1) * 127.5 + 0.5).clamp(0, 255).byte().cpu().numpy())
    return np.concatenate(frames)


def time_per_frame(network: TwinDenoiser, inputs: EvalInputs, steps: int) -> float:
    """Median milliseconds to render one frame at batch 1 (PyTorch, this machine's CPU or GPU)."""
    single = EvalInputs(inputs.indices[:1], inputs.truth[:1], inputs.masked[:1], inputs.reference, inputs.mel[:1],
                        inputs.audio)
    render(network, single, steps)
    timings = []
    for _ in range(TIMING_FRAMES):
        started = time.perf_counter()
        render(network, single, steps)
        timings.append(1000 * (time.perf_counter() - started))
    return float(np.median(timings))


class MouthSignals(NamedTuple):
    """Two per-frame measures of how open the mouth is, from one FaceMesh pass; NaN where no face was found."""

    opening: np.ndarray  # landmarks: upper-lip top to chin over the eye distance (avatar.landmarks.mouth_opening)
    cavity: np.ndarray  # pixels: the dark share of the lips' box (model.metrics.mouth_cavity_share)


def mouth_signals(frames: np.ndarray | list[np.ndarray], pad_px: int | None = None) -> MouthSignals:
    """Measure the mouth on each RGB frame, landmarks and pixels alike.

    Args:
        frames: RGB images of one face, in time order (FaceMesh tracks across them).
        pad_px: border added around each frame (mirrored) so the detector sees a whole face; by default half the
            frame's height, which a tight aligned crop needs. Pass 0 for whole video frames.
    """
    from avatar.landmarks import FaceLandmarker, mouth_opening  # mediapipe: not needed for the image metrics

    openings, cavities = [], []
    with FaceLandmarker(video=True) as landmarker:
        for frame in frames:
            pad = frame.shape[0] // 2 if pad_px is None else pad_px
            canvas = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REFLECT101) if pad else frame
            points = landmarker.detect(canvas)
            openings.append(mouth_opening(points) if points is not None else math.nan)
            cavities.append(mouth_cavity_share(canvas, points) if points is not None else math.nan)
    return MouthSignals(np.array(openings), np.array(cavities))


def image_metrics(rendered: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of the mouth box and the whole crop, and the mouth's sharpness ratio."""
    rows, cols = mouth_box(rendered.shape[1])
    pairs = list(zip(rendered, truth, strict=True))
    return {
        "psnr_mouth": float(np.mean([psnr(r[rows, cols], t[rows, cols]) for r, t in pairs])),
        "ssim_mouth": float(np.mean([ssim(r[rows, cols], t[rows, cols]) for r, t in pairs])),
        "psnr_face": float(np.mean([psnr(r, t) for r, t in pairs])),
        "ssim_face": float(np.mean([ssim(r, t) for r, t in pairs])),
        "sharpness_ratio": sharpness_ratio([r[rows, cols] for r, _ in pairs], [t[rows, cols] for _, t in pairs]),
    }


def sync_metrics(rendered: np.ndarray, truth_mouth: MouthSignals) -> dict[str, float]:
    """Lip sync: the best lagged correlation of each mouth measure on the renders with the truth's, and its lag.

    ``sync_corr``/``sync_lag_frames`` use the landmark opening; ``sync_corr_pixels``/``sync_lag_frames_pixels``
    the mouth-cavity share, which also tells an open mouth from a closed smile showing teeth.
    """
    rendered_mouth = mouth_signals(rendered)
    sync_corr, sync_lag = lagged_correlation(rendered_mouth.opening, truth_mouth.opening)
    pixels_corr, pixels_lag = lagged_correlation(rendered_mouth.cavity, truth_mouth.cavity)
    return {"sync_corr": sync_corr, "sync_lag_frames": sync_lag,
            "sync_corr_pixels": pixels_corr, "sync_lag_frames_pixels": pixels_lag}


def truth_mouth_summary(truth_mouth: MouthSignals) -> dict[str, float | int | None]:
    """How much each mouth measure moves on the true holdout frames (mean, standard deviation, frames without a
    face): a lip-sync correlation means little when the truth's own measure barely moves."""
    summary: dict[str, float | int | None] = {}
    for name, series in (("opening", truth_mouth.opening), ("cavity", truth_mouth.cavity)):
        found = series[~np.isnan(series)]
        summary[f"{name}_mean"] = round_metric(float(found.mean())) if found.size else None
        summary[f"{name}_std"] = round_metric(float(found.std())) if found.size else None
    summary["no_face_frames"] = int(np.isnan(truth_mouth.opening).sum())
    return summary


def score(rendered: np.ndarray, inputs: EvalInputs, truth_mouth: MouthSignals) -> dict[str, float]:
    """All metrics of one variant's renders against the truth."""
    return {**image_metrics(rendered, inputs.truth), **sync_metrics(rendered, truth_mouth)}


def evaluate(run: Path, *, pack_path: Path | None = None, limit: int | None = None, video: bool = True,
             progress: bool = True, on_progress: Callable[[float], None] | None = None,
             threads: int = 0) -> dict[str, Any]:
    """Evaluate every variant the run holds; writes ``eval.json`` (and ``eval.mp4``) into the run.

    ``on_progress``, when given, is told the fraction of the variants scored. ``threads``: PyTorch's CPU threads
    (0: all cores; on a busy machine one can be much faster, see ``model.schedule.pick_threads``).

    Raises:
        NotFoundError: no teacher in the run, or its pack is gone (pass ``pack_path``).
    """
    roles = available_roles(run)
    if "teacher" not in roles:
        raise NotFoundError(f"{run} holds no teacher checkpoint; train one with `twincast train`")
    teacher = load_checkpoint(run, "teacher")
    pack_path = pack_path or Path(teacher.pack["path"])
    if not (pack_path / "avatar.json").is_file():
        raise NotFoundError(f"the run's avatar pack {pack_path} is not there; pass --pack")
    torch.set_num_threads(threads or os.cpu_count() or 1)
    pack = AvatarPack.load(pack_path)
    inputs = load_holdout(pack, limit)
    truth_mouth = mouth_signals(inputs.truth)
    networks = {role: load_checkpoint(run, role).build() for role in roles}
    report: dict[str, Any] = {"run": str(run), "pack": str(pack_path), "holdout_frames": int(len(inputs.indices)),
                              "holdout": [int(inputs.indices[0]), int(inputs.indices[-1]) + 1],
                              "device": "cpu", "truth_mouth": truth_mouth_summary(truth_mouth), "variants": {},
                              "missing": []}
    renders: dict[str, np.ndarray] = {}
    chosen, report["missing"] = variant_plan(roles)
    for done, (name, role, steps) in enumerate(tqdm(chosen, desc="eval", unit="variant", disable=not progress)):
        renders[name] = render(networks[role], inputs, steps)
        metrics = score(renders[name], inputs, truth_mouth)
        metrics["ms_per_frame"] = time_per_frame(networks[role], inputs, steps)
        report["variants"][name] = {key: round_metric(value) for key, value in metrics.items()}
        if on_progress is not None:
            on_progress((done + 1) / len(chosen))
    if video:
        report["video"] = str(write_side_by_side(run / "eval.mp4", inputs, renders))
    atomic_write_bytes(run / "eval.json", json.dumps(report, indent=1).encode())
    return report


def variant_plan(roles: list[str]) -> tuple[list[tuple[str, str, int]], list[str]]:
    """The variants a run with ``roles`` can render, as (name, role, steps), and the names it cannot."""
    chosen = [(name, role, steps) for name, (role, steps) in VARIANTS.items() if role in roles]
    missing = [name for name, (role, _) in VARIANTS.items() if role not in roles]
    return chosen, missing


def round_metric(value: float) -> float | int | None:
    """A metric for the JSON report: 4 decimals, integers kept, NaN as null."""
    if isinstance(value, int):
        return value
    return None if math.isnan(value) else round(float(value), 4)


def write_side_by_side(path: Path, inputs: EvalInputs, renders: dict[str, np.ndarray]) -> Path:
    """truth | teacher | 2-step | 1-step | baseline, labelled, with the holdout audio."""
    from avatar.video_io import VideoWriter  # PyAV: not needed for the metrics

    columns = [("truth", inputs.truth)] + [(name, renders[name]) for name in SIDE_BY_SIDE if name in renders]
    size = inputs.truth.shape[1]
    label_px = max(14, size // 8)
    with atomic_path(path) as tmp, VideoWriter(tmp, width=size * len(columns), height=size + label_px,
                                               fps=25, audio_rate_hz=PLAYBACK_RATE_HZ) as writer:
        start = int(inputs.indices[0])
        for index, frame in enumerate(inputs.indices):
            canvas = np.zeros((size + label_px, size * len(columns), 3), np.uint8)
            for column, (label, frames) in enumerate(columns):
                canvas[label_px:, column * size:(column + 1) * size] = frames[index]
                cv2.putText(canvas, label, (column * size + 3, label_px - 4), cv2.FONT_HERSHEY_SIMPLEX,
                            label_px / 36, (235, 235, 235), 1, cv2.LINE_AA)
            offset = (int(frame) - start) * PLAYBACK_SAMPLES_PER_FRAME
            chunk = inputs.audio[offset:offset + PLAYBACK_SAMPLES_PER_FRAME]
            writer.write(canvas, chunk)
    return path
