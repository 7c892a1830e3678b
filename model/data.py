"""Training batches drawn from an avatar pack: target crop, masked crop, reference crop and mel window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from avatar.pack import AvatarPack
from twincast.errors import UnprocessableError


def to_unit_range(crops_uint8: Tensor) -> Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float in [-1, 1]."""
    return crops_uint8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass(frozen=True)
class Batch:
    """One training batch; images are (B, 3, C, C) in [-1, 1], mel is (B, 80, 16)."""

    target: Tensor
    reference: Tensor
    mel: Tensor


class Sampler(Protocol):
    """What the training loop draws batches from: one pack (``PackSampler``) or several (``model.prior``)."""

    def draw(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size`` training samples, drawn with ``generator``."""
        ...


class PackSampler:
    """Random batches from a pack's training frames (the holdout block is never drawn)."""

    def __init__(self, pack: AvatarPack, indices: np.ndarray | None = None) -> None:
        self.indices = pack.train_indices() if indices is None else indices
        if self.indices.size < 2:
            raise UnprocessableError(f"avatar pack {pack.root} has {self.indices.size} training frames; need ≥ 2")
        self.crops = torch.from_numpy(np.array(pack.array("crops")))
        self.mel = torch.from_numpy(np.asarray(pack.array("mel"), dtype=np.float32))

    def draw(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of random training frames, each with a random other training frame as its reference."""
        count = self.indices.size
        picks = torch.randint(count, (batch_size,), generator=generator)
        offsets = torch.randint(1, count, (batch_size,), generator=generator)
        refs = (picks + offsets) % count  # never the target frame itself
        frame = torch.from_numpy(self.indices)[picks]
        reference = torch.from_numpy(self.indices)[refs]
        return Batch(target=to_unit_range(self.crops[frame]), reference=to_unit_range(self.crops[reference]),
                     mel=self.mel[frame])
