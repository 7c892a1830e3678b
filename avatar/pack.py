"""The avatar pack: the contract between enrollment, training and the live loop.

A directory with ``avatar.json`` (schema version, timing, crop geometry, holdout, source hash, and the shape
and dtype of every array) and the arrays themselves. The loader checks all of it and names what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avatar.audio import MelSpec
from twincast.errors import InputError, NotFoundError

SCHEMA_VERSION = 3  # 2: the mel window looks back (MelSpec.lookahead_ms); 3: flags, pose, blink, speech, bank
META_FILE = "avatar.json"
BASE_VIDEO = "base.mp4"

# name → (dtype, shape with "N" for the frame count and "C" for the crop size)
ARRAYS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "crops": ("uint8", ("N", "C", "C", 3)),
    "transforms": ("float32", ("N", 2, 3)),
    "landmarks": ("float32", ("N", 468, 2)),
    "valid": ("bool", ("N",)),  # no flag set
    "flags": ("uint8", ("N",)),  # bit mask of rejection reasons, in the order of ``flag_reasons``
    "pose": ("float32", ("N", 3)),  # head yaw, pitch, roll in degrees; NaN without a face
    "mouth_open": ("float32", ("N",)),
    "blink": ("float32", ("N",)),  # eye openness (aspect ratio); it dips in a blink; NaN without a face
    "speech": ("bool", ("N",)),  # the frame's audio is speech, not silence
    "mel": ("float16", ("N", "M", "W")),
    "audio_16k": ("float32", ("A16",)),
    "audio_48k": ("int16", ("A48",)),
    "base_transforms": ("float32", ("B", 2, 3)),
}


@dataclass(frozen=True)
class PackMeta:
    """The contents of ``avatar.json``."""

    schema_version: int
    fps: int
    frame_count: int
    crop_px: int
    mask_top: float
    frame_width: int
    frame_height: int
    feature_rate_hz: int
    playback_rate_hz: int
    holdout: tuple[int, int]
    base_range: tuple[int, int]
    reference_index: int
    usable_frames: int
    source: dict[str, Any]
    mel: dict[str, Any]
    created_by: str
    reference_bank: list[int] = field(default_factory=list)  # frames spread over poses and mouth shapes
    idle_segments: list[dict[str, Any]] = field(default_factory=list)  # {start, end, loop, jump}
    flag_reasons: list[str] = field(default_factory=list)  # flag bit i means flag_reasons[i]
    rejected: dict[str, int] = field(default_factory=dict)  # frames carrying each flag
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def mel_spec(self) -> MelSpec:
        """The mel parameters the features were computed with."""
        return MelSpec(**self.mel)

    def to_json(self) -> str:
        """Serialise for ``avatar.json``."""
        return json.dumps(asdict(self), indent=1)


def expected_shape(name: str, meta: PackMeta) -> tuple[int, ...]:
    """The shape array ``name`` must have in a pack described by ``meta``."""
    sizes = {
        "N": meta.frame_count,
        "C": meta.crop_px,
        "M": int(meta.mel["n_mels"]),
        "W": int(meta.mel["window_frames"]),
        "A16": meta.frame_count * (meta.feature_rate_hz // meta.fps),
        "A48": meta.frame_count * (meta.playback_rate_hz // meta.fps),
        "B": meta.base_range[1] - meta.base_range[0],
    }
    return tuple(sizes[dim] if isinstance(dim, str) else dim for dim in ARRAYS[name][1])


class AvatarPack:
    """A loaded, validated avatar pack. Arrays are memory-mapped and read on first use."""

    def __init__(self, root: Path, meta: PackMeta) -> None:
        self.root = root
        self.meta = meta
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, root: Path) -> AvatarPack:
        """Open and validate a pack.

        Raises:
            NotFoundError: no pack at ``root``.
            InputError: wrong schema version, a missing array, or an array of the wrong shape or dtype.
        """
        meta_path = root / META_FILE
        if not meta_path.is_file():
            raise NotFoundError(f"{root} is not an avatar pack: {META_FILE} is missing (run `twincast enroll`)")
        try:
            raw = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path} is not valid JSON: {exc}") from exc
        version = raw.get("schema_version")
        if version != SCHEMA_VERSION:
            raise InputError(
                f"{meta_path} has schema_version {version!r}; this twincast reads version {SCHEMA_VERSION}. "
                "Re-enroll the footage with this version."
            )
        try:
            raw["holdout"] = tuple(raw["holdout"])
            raw["base_range"] = tuple(raw["base_range"])
            meta = PackMeta(**raw)
        except (KeyError, TypeError) as exc:
            raise InputError(f"{meta_path} does not match avatar pack schema {SCHEMA_VERSION}: {exc}") from exc
        pack = cls(root, meta)
        pack.validate()
        return pack

    def validate(self) -> None:
        """Check every array's presence, shape and dtype against ``avatar.json``."""
        for name, (dtype, _) in ARRAYS.items():
            path = self.root / f"{name}.npy"
            if not path.is_file():
                raise InputError(f"avatar pack {self.root} is missing {path.name}")
            array = np.load(path, mmap_mode="r")
            want = expected_shape(name, self.meta)
            if array.shape != want or array.dtype != np.dtype(dtype):
                raise InputError(
                    f"avatar pack {self.root}: {path.name} has shape {array.shape} {array.dtype}, "
                    f"expected {want} {dtype}"
                )
        if not (self.root / BASE_VIDEO).is_file():
            raise InputError(f"avatar pack {self.root} is missing {BASE_VIDEO}")
        start, end = self.meta.holdout
        if not 0 <= start <= end <= self.meta.frame_count:
            raise InputError(
                f"avatar pack {self.root}: holdout {self.meta.holdout} is outside 0..{self.meta.frame_count}"
            )
        outside = [i for i in [self.meta.reference_index, *self.meta.reference_bank]
                   if not 0 <= i < self.meta.frame_count]
        if outside:
            raise InputError(f"avatar pack {self.root}: reference frames {outside} are outside "
                             f"0..{self.meta.frame_count - 1}")

    def array(self, name: str) -> np.ndarray:
        """One of the pack's arrays, memory-mapped."""
        if name not in ARRAYS:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = np.load(self.root / f"{name}.npy", mmap_mode="r")
        return self._cache[name]

    def train_indices(self) -> np.ndarray:
        """Frames usable for training: a face was found, and outside the holdout block."""
        valid = np.asarray(self.array("valid"))
        index = np.arange(self.meta.frame_count)
        start, end = self.meta.holdout
        return index[valid & ((index < start) | (index >= end))]

    def holdout_indices(self) -> np.ndarray:
        """Frames of the contiguous holdout block that have a face."""
        start, end = self.meta.holdout
        index = np.arange(start, end)
        return index[np.asarray(self.array("valid"))[start:end]]

    def base_frames(self) -> np.ndarray:
        """The base loop's full frames, RGB uint8 (B, H, W, 3), decoded from ``base.mp4``."""
        from avatar.video_io import read_video_frames

        frames = read_video_frames(self.root / BASE_VIDEO)
        count = self.meta.base_range[1] - self.meta.base_range[0]
        if frames.shape[0] < count:
            raise InputError(f"avatar pack {self.root}: {BASE_VIDEO} has {frames.shape[0]} frames, expected {count}")
        return frames[:count]

    def reference_crop(self) -> np.ndarray:
        """The identity reference crop, RGB uint8 (C, C, 3)."""
        return np.asarray(self.array("crops")[self.meta.reference_index])

    def reference_bank_crops(self) -> np.ndarray:
        """The reference bank's crops, RGB uint8 (K, C, C, 3): the identity over poses and mouth shapes."""
        bank = self.meta.reference_bank or [self.meta.reference_index]
        return np.stack([np.asarray(self.array("crops")[index]) for index in bank])
