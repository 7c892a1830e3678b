"""The loop helpers every trainer shares (teacher and baseline, autoencoder, distillation): the device and
seeds, the warm-up/cosine schedule, mixed precision, one optimiser step, the EMA of weights, the loss shown on
the progress bar, and what a checkpoint records about its pack."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar.pack import AvatarPack
from model.config import ModelConfig
from twincast.errors import DependencyError, InputError


@dataclass(frozen=True)
class StepReport:
    """What a training loop tells its observer after each optimiser step."""

    role: str  # teacher, baseline, student or autoencoder
    step: int  # steps done so far
    steps: int  # steps planned
    loss: float  # mean of the recent losses (``recent_loss``)
    network: torch.nn.Module  # the weights a checkpoint taken now would hold (the EMA copy when there is one)


StepObserver = Callable[[StepReport], None]


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` says: ``auto`` is CUDA when available, else the CPU.

    Raises:
        DependencyError: a CUDA device was asked for on a machine without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DependencyError(f"device {name!r} was asked for but this machine's PyTorch sees no CUDA GPU; "
                              "use --device cpu (or auto)")
    return torch.device(name)


def seeded_device(threads: int, seed: int, device_name: str = "auto") -> tuple[torch.device, torch.Generator]:
    """The training device (``pick_device``; on CPU with ``threads`` threads, 0 = all cores), torch seeded, and a
    batch generator."""
    device = pick_device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    return device, torch.Generator().manual_seed(seed)


def warmup_cosine(step: int, steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 10% of ``peak`` at ``steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def mixed_precision(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def optimise(optimizer: torch.optim.Optimizer, loss: Tensor, parameters: list[torch.nn.Parameter]) -> float:
    """One optimiser step: gradients of ``loss``, clipped to norm 1 over ``parameters``; returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    return float(loss.item())


def recent_loss(losses: list[float], count: int = 50) -> float:
    """Mean of the last ``count`` losses (NaN when there are none)."""
    tail = losses[-count:]
    return sum(tail) / len(tail) if tail else math.nan


def show_loss(bar: Any, step: int, losses: list[float]) -> None:
    """Put the recent loss on the progress bar every 10 steps."""
    if step % 10 == 0:
        bar.set_postfix(loss=f"{recent_loss(losses):.4f}")


def pack_info(pack: AvatarPack, pack_path: Path) -> dict[str, Any]:
    """What a checkpoint records about the pack it was trained on."""
    return {"path": str(pack_path), "source_sha256": pack.meta.source["sha256"], "crop_px": pack.meta.crop_px,
            "mask_top": pack.meta.mask_top, "fps": pack.meta.fps, "mel": dict(pack.meta.mel)}


def check_fits(model_config: ModelConfig, pack: AvatarPack) -> None:
    """Refuse a model whose crop geometry differs from the pack's."""
    if (model_config.crop_px, model_config.mask_top) != (pack.meta.crop_px, pack.meta.mask_top):
        raise InputError(
            f"model crop_px/mask_top {model_config.crop_px}/{model_config.mask_top} do not match the pack's "
            f"{pack.meta.crop_px}/{pack.meta.mask_top}"
        )


def update_ema(ema: torch.nn.Module, network: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of weights: ema ← decay · ema + (1 − decay) · network."""
    with torch.no_grad():
        for averaged, live in zip(ema.parameters(), network.parameters(), strict=True):
            averaged.lerp_(live, 1 - decay)
