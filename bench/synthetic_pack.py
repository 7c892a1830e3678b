"""A structurally valid avatar pack made without enrollment (no mediapipe), for speed measurements only.

    PYTHONPATH=. python -m bench.synthetic_pack OUT_DIR [--crop-px 256] [--seconds 4] [--frame 512x512]

The committed portrait (``assets/portrait.png``, scaled to cover the frame size and cut to it) sways a few pixels
per frame for ``--seconds`` at 25 fps; those frames are the base loop (``base.mp4``, H.264 written with PyAV, as
enrollment writes it) and every frame's aligned crop. The crop boxes come from fixed eye and nose positions measured
once by hand on the portrait (``PORTRAIT_ANCHORS``), moved with the sway; landmarks are zeros, the audio is silence,
head poses are level, every frame is valid and idle. Loaded by ``twincast serve --avatar`` like an enrolled pack
(``AvatarPack.load`` validates it), it gives the server real frame sizes to composite and encode, but it is no
twin: nothing in it was measured, so it means nothing for quality, lip sync or training. ``synthetic.json`` in the
pack says so. The crop size must be the model's (``crop_px`` of the artifact: 256 for ``base`` as ``bench.gpu``
exports it, 64 for ``tiny``); ``serve`` refuses a pack whose crop size or mask line differs from its model's.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar import align
from avatar.audio import FEATURE_SAMPLES_PER_FRAME, PLAYBACK_RATE_HZ, PLAYBACK_SAMPLES_PER_FRAME, MelSpec, mel_windows
from avatar.pack import ARRAYS, BASE_VIDEO, META_FILE, SCHEMA_VERSION, AvatarPack, PackMeta, expected_shape
from twincast.errors import InputError, NotFoundError
from twincast.files import sha256_file

PORTRAIT = Path(__file__).resolve().parent.parent / "assets" / "portrait.png"
PORTRAIT_ANCHORS = np.array([[203.0, 101.0], [245.0, 104.0], [224.0, 126.0]])  # left eye, right eye, nose tip (px)
FPS = 25
SWAY_PX = (3.0, 2.0)  # the sway's amplitude in x and y, frame pixels at the portrait's scale
SWAY_PERIOD_FRAMES = (50, 37)
MARKER_FILE = "synthetic.json"
PURPOSE = ("synthetic pack for speed measurements only (bench.synthetic_pack): fixed crop boxes, zero landmarks, "
           "silent audio; not a twin, not for quality, lip sync or training")


def parse_frame_size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` → (width, height), both even and at least 64.

    Raises:
        InputError: not in that form, odd, or too small.
    """
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise InputError(f"frame size {text!r} must look like WIDTHxHEIGHT, e.g. 720x1280")
    width, height = int(match.group(1)), int(match.group(2))
    if width < 64 or height < 64 or width % 2 or height % 2:
        raise InputError(f"frame size {width}x{height} must be even in both sides and at least 64x64")
    return width, height


def load_portrait(frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The portrait scaled to cover ``frame_size`` and cut to it (centred), RGB uint8, with its anchors moved along.

    Raises:
        NotFoundError: the committed portrait is missing.
    """
    bgr = cv2.imread(str(PORTRAIT), cv2.IMREAD_COLOR)
    if bgr is None:
        raise NotFoundError(f"the portrait {PORTRAIT} is missing or unreadable; it is part of the repository")
    width, height = frame_size
    scale = max(width / bgr.shape[1], height / bgr.shape[0])
    scaled = cv2.resize(bgr, (round(bgr.shape[1] * scale), round(bgr.shape[0] * scale)),
                        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    left, top = (scaled.shape[1] - width) // 2, (scaled.shape[0] - height) // 2
    frame = cv2.cvtColor(scaled[top : top + height, left : left + width], cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(frame), PORTRAIT_ANCHORS * scale - np.array([left, top])


def swaying_frames(still: np.ndarray, anchors: np.ndarray, count: int, crop_px: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` frames of the still shifted a few pixels each (a slow sway), and each frame's frame → crop
    transform (N, 2, 3) from the anchors moved with it."""
    scale = float(np.linalg.norm(anchors[1] - anchors[0]) / np.linalg.norm(PORTRAIT_ANCHORS[1] - PORTRAIT_ANCHORS[0]))
    height, width = still.shape[:2]
    frames, transforms = [], []
    template = align.TEMPLATE * crop_px
    for index in range(count):
        dx = SWAY_PX[0] * scale * np.sin(2 * np.pi * index / SWAY_PERIOD_FRAMES[0])
        dy = SWAY_PX[1] * scale * np.sin(2 * np.pi * index / SWAY_PERIOD_FRAMES[1])
        shift = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]])
        frames.append(cv2.warpAffine(still, shift, (width, height), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_REFLECT101))
        transforms.append(align.similarity_transform(anchors + np.array([dx, dy]), template))
    return np.stack(frames), np.stack(transforms).astype(np.float32)


def write_base_video(path: Path, frames: np.ndarray) -> None:
    """The base loop as H.264 mp4 without audio, as enrollment writes it (PyAV, imported here only)."""
    from avatar.video_io import VideoWriter

    height, width = frames.shape[1:3]
    with VideoWriter(path, width=width, height=height, fps=FPS, crf=12, audio_rate_hz=None) as writer:
        for frame in frames:
            writer.write(frame)


def build(out: Path, *, crop_px: int, mask_top: float = 0.55, seconds: float = 4.0,
          frame_size: tuple[int, int] = (512, 512), mel: MelSpec | None = None) -> AvatarPack:
    """Write a synthetic pack to ``out`` (made if missing; its pack files are replaced) and return it, loaded and
    validated.

    Raises:
        InputError: a crop size, mask line or length out of range.
    """
    if not 32 <= crop_px <= 1024:
        raise InputError(f"crop_px {crop_px} must be in 32..1024 (the model's crop size: 256 for base, 64 for tiny)")
    if not 0.0 < mask_top < 1.0:
        raise InputError(f"mask_top {mask_top} must be between 0 and 1")
    if not 0.2 <= seconds <= 60:
        raise InputError(f"seconds {seconds} must be in 0.2..60")
    spec = mel or MelSpec()
    count = round(seconds * FPS)
    still, anchors = load_portrait(frame_size)
    frames, transforms = swaying_frames(still, anchors, count, crop_px)
    crops = np.stack([align.warp_crop(frame, matrix, crop_px) for frame, matrix in
                      zip(frames, transforms, strict=True)])
    silence_16k = np.zeros(count * FEATURE_SAMPLES_PER_FRAME, np.float32)
    arrays: dict[str, np.ndarray] = {
        "crops": crops, "transforms": transforms, "landmarks": np.zeros((count, 468, 2), np.float32),
        "valid": np.ones(count, bool), "flags": np.zeros(count, np.uint8), "pose": np.zeros((count, 3), np.float32),
        "mouth_open": np.zeros(count, np.float32), "blink": np.full(count, 0.3, np.float32),
        "speech": np.zeros(count, bool),
        "mel": mel_windows(silence_16k, np.arange(count), spec).astype(np.float16),
        "audio_16k": silence_16k, "audio_48k": np.zeros(count * PLAYBACK_SAMPLES_PER_FRAME, np.int16),
        "base_transforms": transforms,
    }
    meta = PackMeta(
        schema_version=SCHEMA_VERSION, fps=FPS, frame_count=count, crop_px=crop_px, mask_top=mask_top,
        frame_width=frame_size[0], frame_height=frame_size[1], feature_rate_hz=spec.sample_rate_hz,
        playback_rate_hz=PLAYBACK_RATE_HZ, holdout=(count, count), base_range=(0, count),
        reference_index=0, usable_frames=count,
        source={"name": PORTRAIT.name, "sha256": sha256_file(PORTRAIT), "synthetic": True, "purpose": PURPOSE},
        mel=asdict(spec), created_by="bench.synthetic_pack", reference_bank=[0],
        idle_segments=[{"start": 0, "end": count, "loop": "ping-pong", "jump": 0.0}],
    )
    manifest = {name: {"shape": list(expected_shape(name, meta)), "dtype": ARRAYS[name][0]} for name in ARRAYS}
    meta = PackMeta(**{**asdict(meta), "arrays": manifest})
    out.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array.astype(ARRAYS[name][0], copy=False))
    write_base_video(out / BASE_VIDEO, frames)
    (out / META_FILE).write_text(meta.to_json())
    marker: dict[str, Any] = {"purpose": PURPOSE, "portrait": str(PORTRAIT.name), "crop_px": crop_px,
                              "mask_top": mask_top, "frames": count, "frame_size": list(frame_size)}
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=1))
    return AvatarPack.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--crop-px", type=int, default=256, help="the model's crop size (base 256, tiny 64)")
    parser.add_argument("--mask-top", type=float, default=0.55)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--frame", default="512x512", help="frame size WIDTHxHEIGHT (even), e.g. 720x1280")
    args = parser.parse_args()
    try:
        pack = build(args.out, crop_px=args.crop_px, mask_top=args.mask_top, seconds=args.seconds,
                     frame_size=parse_frame_size(args.frame))
    except (InputError, NotFoundError) as exc:
        raise SystemExit(f"bench.synthetic_pack: {exc}") from exc
    print(f"synthetic pack {pack.root}: {pack.meta.frame_count} frames of {pack.meta.frame_width}x"
          f"{pack.meta.frame_height}, crop {pack.meta.crop_px}", file=sys.stderr)


if __name__ == "__main__":
    main()
