"""Checkpoints: weights plus the config that built them, written atomically."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from model.config import ModelConfig, TrainConfig
from model.networks import TwinDenoiser
from twincast.errors import InputError, NotFoundError
from twincast.files import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: configs, weights and training state."""

    model: ModelConfig
    train: TrainConfig
    state_dict: dict[str, torch.Tensor]
    step: int
    pack: dict[str, Any]
    extra: dict[str, Any]

    def build(self) -> TwinDenoiser:
        """Instantiate the network in eval mode with these weights."""
        network = TwinDenoiser(self.model)
        network.load_state_dict(self.state_dict)
        return network.eval()


def save_checkpoint(path: Path, *, model: ModelConfig, train: TrainConfig, state_dict: dict[str, torch.Tensor],
                    step: int, pack: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Serialise a checkpoint to ``path`` through a temporary file and a rename."""
    payload = {
        "format_version": FORMAT_VERSION,
        "model": asdict(model),
        "train": asdict(train),
        "state_dict": {key: value.detach().cpu() for key, value in state_dict.items()},
        "step": step,
        "pack": pack,
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resolve_checkpoint(path: Path) -> Path:
    """Accept a run directory or a checkpoint file.

    Raises:
        NotFoundError: neither exists.
    """
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise NotFoundError(f"no checkpoint at {path}; expected a run directory holding {CHECKPOINT_FILE}")
    return candidate


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (a run directory or the file itself).

    Raises:
        NotFoundError: nothing at ``path``.
        InputError: not a twincast checkpoint, or a different format version.
    """
    file = resolve_checkpoint(path)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a corrupt file
        raise InputError(f"{file} is not a readable twincast checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{file} is not a twincast checkpoint of format version {FORMAT_VERSION}")
    model_fields = dict(payload["model"])
    model_fields["channels"] = tuple(model_fields["channels"])
    return Checkpoint(
        model=ModelConfig(**model_fields),
        train=TrainConfig(**payload["train"]),
        state_dict=payload["state_dict"],
        step=int(payload["step"]),
        pack=dict(payload["pack"]),
        extra=dict(payload["extra"]),
    )
