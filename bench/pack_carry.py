"""An avatar pack made small enough to carry to a GPU machine that cannot enroll (no mediapipe, no PyAV).

    PYTHONPATH=. python -m bench.pack_carry pack PACK_DIR CARRY_DIR      (here, after `twincast enroll`)
    PYTHONPATH=. python -m bench.pack_carry unpack CARRY_DIR PACK_DIR    (there, before training)

The crops travel as JPEG (quality 95, decoded by OpenCV on both sides, so both machines train and score
against the same decoded pixels); the arrays that training and eval read travel compressed; the audio
waveforms and landmarks, which neither reads, come back as zeros of the right shape. The unpacked pack says
so in ``carried.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from avatar.pack import ARRAYS, BASE_VIDEO, META_FILE, AvatarPack, PackMeta, expected_shape

JPEG_QUALITY = 95
LEFT_BEHIND = ["landmarks", "audio_16k", "audio_48k"]
CARRIED_FILE = "carried.json"
QUALITY_FILE = "quality.json"


def save_jpeg(path: Path, frames: np.ndarray, quality: int = JPEG_QUALITY) -> None:
    """RGB uint8 frames (N, H, W, 3) → one .npz of JPEG bytes (quality ``JPEG_QUALITY`` unless told)."""
    encoded = []
    for frame in frames:
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode a frame as JPEG")
        encoded.append(np.frombuffer(data.tobytes(), np.uint8))
    np.savez(path, data=np.concatenate(encoded), lengths=np.array([len(e) for e in encoded], np.int64))


def load_jpeg(path: Path) -> np.ndarray:
    """The frames ``save_jpeg`` wrote, decoded to RGB uint8 (N, H, W, 3)."""
    with np.load(path) as jpeg:
        data, lengths = jpeg["data"], jpeg["lengths"]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    frames = []
    for index, (a, b) in enumerate(zip(offsets[:-1], offsets[1:], strict=True)):
        bgr = cv2.imdecode(data[a:b], cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"{path}: frame {index} is not a decodable JPEG")
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def pack(source: Path, out: Path, quality: int = JPEG_QUALITY) -> None:
    """Write the carryable form of the pack at ``source`` into ``out`` (crops at JPEG ``quality``)."""
    avatar = AvatarPack.load(source)
    out.mkdir(parents=True, exist_ok=True)
    for name in (META_FILE, BASE_VIDEO):
        shutil.copyfile(source / name, out / name)
    arrays: dict[str, Any] = {name: np.asarray(avatar.array(name)) for name in ARRAYS
                              if name not in (*LEFT_BEHIND, "crops")}
    np.savez_compressed(out / "arrays.npz", **arrays)
    save_jpeg(out / "crops_jpeg.npz", np.asarray(avatar.array("crops")), quality)
    (out / QUALITY_FILE).write_text(json.dumps({"jpeg_quality": quality}))


def unpack(carried: Path, out: Path) -> AvatarPack:
    """Rebuild a loadable pack in ``out`` from the carryable form in ``carried``; returns it, validated."""
    out.mkdir(parents=True, exist_ok=True)
    raw = json.loads((carried / META_FILE).read_text())
    for name in (META_FILE, BASE_VIDEO):
        shutil.copyfile(carried / name, out / name)
    quality_file = carried / QUALITY_FILE  # absent in packs carried before the quality could be chosen
    quality = json.loads(quality_file.read_text())["jpeg_quality"] if quality_file.is_file() else JPEG_QUALITY
    (out / CARRIED_FILE).write_text(json.dumps({"crops": f"JPEG q{quality}", "zero_filled": LEFT_BEHIND}))
    with np.load(carried / "arrays.npz") as arrays:
        for name in arrays.files:
            np.save(out / f"{name}.npy", arrays[name])
    np.save(out / "crops.npy", load_jpeg(carried / "crops_jpeg.npz"))
    meta = PackMeta(**{**raw, "holdout": tuple(raw["holdout"]), "base_range": tuple(raw["base_range"])})
    for name in LEFT_BEHIND:
        np.save(out / f"{name}.npy", np.zeros(expected_shape(name, meta), ARRAYS[name][0]))
    return AvatarPack.load(out)  # validates every array


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["pack", "unpack"])
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    (pack if args.action == "pack" else unpack)(args.source, args.out)
    print(f"{args.action}ed {args.source} → {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
