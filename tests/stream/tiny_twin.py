"""A twin built in the test, in a second: synthetic base frames and the tiny renderer with seeded random weights,
run by PyTorch in-process. For the unit tier's live-loop tests, which need a real renderer and real assets but
not a trained one (the integration tier runs the trained chain)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from avatar import align
from avatar.audio import MelSpec
from model.config import preset
from model.networks import TwinDenoiser
from model.render_inputs import INPUT_NAMES
from model.renderer import build_renderer
from stream.assets import TwinAssets, crops_to_model
from stream.session import Twin

CROP_PX = 64
MASK_TOP = 0.55
FRAME_PX = 96
BASE_FRAMES = 12


class TinyRenderer:
    """The tiny preset's renderer (2 sampler steps) with seeded random weights, called like an ``Engine``."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        model = preset("tiny", crop_px=CROP_PX, mask_top=MASK_TOP).model
        self.denoiser = TwinDenoiser(model).eval()
        self._renderer = build_renderer(self.denoiser, steps=2, precision="fp32")
        self.noise_shape = self.denoiser.noise_shape(1)[1:]

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            faces = self._renderer(*(torch.from_numpy(np.ascontiguousarray(inputs[name])) for name in INPUT_NAMES))
        return faces.numpy()


def tiny_assets() -> TwinAssets:
    """A base loop of ``BASE_FRAMES`` synthetic 96² frames (a lit oval on a gradient, swaying), cropped as
    ``TwinAssets.from_pack`` crops a pack's, with head poses that roll from −6° to +6°."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:FRAME_PX, 0:FRAME_PX].astype(np.float32)
    frames, transforms = [], []
    for index in range(BASE_FRAMES):
        shift = 2.0 * np.sin(index / 2.0)
        face = ((xs - 48 - shift) / 28) ** 2 + ((ys - 50) / 36) ** 2 < 1.0
        frame = np.stack([60 + xs, 80 + 0.5 * ys, 120 - 0.3 * xs], axis=-1)
        frame[face] = (200, 160, 140)
        frame += rng.normal(0, 3, frame.shape)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
        scale = CROP_PX / 72
        transforms.append(np.array([[scale, 0, -(12 + shift) * scale], [0, scale, -14 * scale]]))
    base = np.stack(frames)
    matrices = np.stack(transforms)
    crops = np.stack([align.warp_crop(frame, matrix, CROP_PX) for frame, matrix in zip(base, matrices, strict=True)])
    masked = crops_to_model(crops)
    masked[:, :, int(np.ceil(MASK_TOP * CROP_PX - 0.5)):, :] = 0.0
    poses = np.zeros((BASE_FRAMES, 3), np.float32)
    poses[:, 2] = np.linspace(-6, 6, BASE_FRAMES)
    return TwinAssets(base_frames=base, transforms=matrices, masked_crops=masked,
                      reference=crops_to_model(crops[:1])[0], paste_mask=align.paste_mask(CROP_PX, MASK_TOP),
                      base_poses=poses, crop_px=CROP_PX, mask_top=MASK_TOP)


def tiny_twin(engine_key: str = "tiny") -> Twin:
    """The synthetic twin, rendered by the engine registered under ``engine_key``."""
    return Twin("tiny", tiny_assets(), engine_key, MelSpec(), CROP_PX)
