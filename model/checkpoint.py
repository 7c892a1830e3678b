"""Checkpoints: weights plus the config that built them, written atomically.

A run directory holds up to three roles: ``checkpoint.pt`` (the flow-matching teacher), ``student.pt`` (the
few-step consistency student distilled from it) and ``baseline.pt`` (the 1-step regression baseline), plus
``resume-<role>.pt`` with the optimiser and random state to continue training.
"""

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
ROLE_FILES = {"teacher": CHECKPOINT_FILE, "student": "student.pt", "baseline": "baseline.pt",
              "autoencoder": "autoencoder.pt"}
RENDERER_ROLES = ("teacher", "student", "baseline")


def resume_file(role: str) -> str:
    """The file holding a role's resumable training state."""
    return f"resume-{role}.pt"

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: configs, weights (as float32) and training state."""

    model: ModelConfig
    train: TrainConfig
    state_dict: dict[str, torch.Tensor]
    step: int
    pack: dict[str, Any]
    extra: dict[str, Any]
    role: str = "teacher"

    def build(self) -> TwinDenoiser:
        """Instantiate the network in eval mode with these weights."""
        network = TwinDenoiser(self.model)
        network.load_state_dict(self.state_dict)
        return network.eval()


def save_checkpoint(path: Path, *, model: ModelConfig, train: TrainConfig, state_dict: dict[str, torch.Tensor],
                    step: int, pack: dict[str, Any], extra: dict[str, Any] | None = None, role: str = "teacher",
                    half: bool = False) -> None:
    """Serialise a checkpoint to ``path`` through a temporary file and a rename.

    Args:
        half: store floating-point weights as float16 (half the size, for committing a model); they are read
            back as float32.
    """
    if role not in ROLE_FILES:
        raise InputError(f"checkpoint role {role!r} must be one of {sorted(ROLE_FILES)}")
    weights = {key: value.detach().cpu() for key, value in state_dict.items()}
    if half:
        weights = {key: value.half() if value.is_floating_point() else value for key, value in weights.items()}
    payload = {
        "format_version": FORMAT_VERSION,
        "role": role,
        "model": asdict(model),
        "train": asdict(train),
        "state_dict": weights,
        "weights_dtype": "float16" if half else "float32",
        "step": step,
        "pack": pack,
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def resolve_checkpoint(path: Path, role: str = "teacher") -> Path:
    """Accept a run directory (picking the ``role``'s file) or a checkpoint file.

    Raises:
        NotFoundError: neither exists.
    """
    candidate = path / ROLE_FILES[role] if path.is_dir() else path
    if not candidate.is_file():
        raise NotFoundError(f"no {role} checkpoint at {path}; expected a run directory holding {ROLE_FILES[role]}")
    return candidate


def load_checkpoint(path: Path, role: str = "teacher") -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint`` (a run directory or the file itself).

    Raises:
        NotFoundError: nothing at ``path``.
        InputError: not a twincast checkpoint, or a different format version.
    """
    file = resolve_checkpoint(path, role)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many unrelated types for a corrupt file
        raise InputError(f"{file} is not a readable twincast checkpoint: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{file} is not a twincast checkpoint of format version {FORMAT_VERSION}")
    model_fields = dict(payload["model"])
    model_fields["channels"] = tuple(model_fields["channels"])
    model_fields["ae_channels"] = tuple(model_fields.get("ae_channels", ()))
    train_fields = {key: value for key, value in payload["train"].items() if key in TrainConfig.__dataclass_fields__}
    weights = {key: value.float() if value.is_floating_point() else value
               for key, value in payload["state_dict"].items()}
    return Checkpoint(
        model=ModelConfig(**model_fields),
        train=TrainConfig(**train_fields),
        state_dict=weights,
        step=int(payload["step"]),
        pack=dict(payload["pack"]),
        extra=dict(payload["extra"]),
        role=str(payload.get("role", "teacher")),
    )


def available_roles(run: Path) -> list[str]:
    """The renderer roles present in a run directory, in the order teacher, student, baseline."""
    return [role for role in RENDERER_ROLES if (run / ROLE_FILES[role]).is_file()]
