"""A twin's static conditioning, prepared once at start: base frames, masked crops, reference, paste mask."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from avatar import align
from avatar.audio import MelSpec
from avatar.pack import AvatarPack
from export.spec import TwinSpec
from twincast.errors import ArtifactMismatchError


def crops_to_model(crops: np.ndarray) -> np.ndarray:
    """(N, C, C, 3) uint8 → (N, 3, C, C) float32 in [-1, 1]."""
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0


def model_to_crop(face: np.ndarray) -> np.ndarray:
    """(3, C, C) float in [-1, 1] → (C, C, 3) uint8."""
    return np.clip((face.transpose(1, 2, 0) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class TwinAssets:
    """Everything per-frame conditioning and compositing need, computed once per twin."""

    base_frames: np.ndarray  # (B, H, W, 3) uint8
    transforms: np.ndarray  # (B, 2, 3) frame → crop
    masked_crops: np.ndarray  # (B, 3, C, C) float32, rows below mask_top zeroed
    reference: np.ndarray  # (3, C, C) float32
    paste_mask: np.ndarray  # (C, C) float32
    base_poses: np.ndarray  # (B, 3) yaw, pitch, roll in degrees
    crop_px: int
    mask_top: float

    @classmethod
    def from_pack(cls, pack: AvatarPack, spec: TwinSpec) -> TwinAssets:
        """Prepare a pack for an artifact, refusing a pack whose crop geometry differs from the model's.

        Raises:
            ArtifactMismatchError: crop size or mask line differ between pack and artifact.
        """
        if (pack.meta.crop_px, pack.meta.mask_top) != (spec.crop_px, spec.mask_top):
            raise ArtifactMismatchError(
                f"avatar pack {pack.root} has crop_px={pack.meta.crop_px}, mask_top={pack.meta.mask_top} but the "
                f"model was trained for crop_px={spec.crop_px}, mask_top={spec.mask_top}"
            )
        if MelSpec(**pack.meta.mel) != MelSpec(**spec.mel):
            raise ArtifactMismatchError(
                f"avatar pack {pack.root} computes audio features as {pack.meta.mel} but the model was trained "
                f"on {spec.mel}; re-enroll the footage or use a model trained on this pack's features"
            )
        frames = pack.base_frames()
        transforms = np.asarray(pack.array("base_transforms"), np.float64)
        crops = np.stack([align.warp_crop(frame, matrix, spec.crop_px) for frame, matrix in
                          zip(frames, transforms, strict=True)])
        masked = crops_to_model(crops)
        masked[:, :, int(np.ceil(spec.mask_top * spec.crop_px - 0.5)):, :] = 0.0
        reference = crops_to_model(pack.reference_crop()[None])[0]
        start, end = pack.meta.base_range
        poses = np.asarray(pack.array("pose")[start:end], np.float32)  # measured at enrollment
        return cls(base_frames=frames, transforms=transforms, masked_crops=masked, reference=reference,
                   paste_mask=align.paste_mask(spec.crop_px, spec.mask_top), base_poses=poses,
                   crop_px=spec.crop_px, mask_top=spec.mask_top)

    @property
    def base_count(self) -> int:
        """Frames in the base loop."""
        return int(self.base_frames.shape[0])

    @property
    def frame_size(self) -> tuple[int, int]:
        """(width, height) of the output video."""
        height, width = self.base_frames.shape[1:3]
        return width, height

    def compose(self, base_index: int, face: np.ndarray) -> np.ndarray:
        """Paste a rendered face (3, C, C) into base frame ``base_index``; returns RGB uint8 (H, W, 3)."""
        return align.paste_back(self.base_frames[base_index], model_to_crop(face), self.transforms[base_index],
                                self.paste_mask)

    def base_i420(self, base_index: int) -> np.ndarray:
        """A base frame as planar yuv420p (shown before the first render arrives)."""
        return cv2.cvtColor(self.base_frames[base_index], cv2.COLOR_RGB2YUV_I420)

    def compose_i420(self, base_index: int, face: np.ndarray) -> np.ndarray:
        """``compose`` converted to planar yuv420p, shape (H * 3 / 2, W), as WebRTC encoders take it."""
        return cv2.cvtColor(self.compose(base_index, face), cv2.COLOR_RGB2YUV_I420)
