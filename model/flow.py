"""Flow matching (rectified flow) with x-prediction: the training loss and the few-step Euler sampler.

Convention: x_t = t · x_1 + (1 − t) · ε, t = 0 is pure noise and t = 1 is data (Lipman et al. 2023;
Liu et al. 2023). The network predicts x̂_1; the velocity is v̂ = (x̂_1 − x_t) / (1 − t).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Denoise = Callable[[Tensor, Tensor], Tensor]
"""A function (x_t, t) → x̂_1 with every condition already bound."""

MIN_REMAINING_T = 0.05  # clamp of 1 − t in the velocity loss weight (JiT, Li & He 2025)


def sample_time(batch: int, mean: float, std: float, generator: torch.Generator | None = None) -> Tensor:
    """Logit-normal flow times in (0, 1) (Esser et al. 2024, "Scaling Rectified Flow Transformers", eq. 19)."""
    return torch.sigmoid(mean + std * torch.randn(batch, generator=generator))


def interpolate(clean: Tensor, noise: Tensor, t: Tensor) -> Tensor:
    """x_t on the straight path from noise (t = 0) to data (t = 1)."""
    t = t.view(-1, 1, 1, 1)
    return t * clean + (1 - t) * noise


def velocity_loss(predicted: Tensor, clean: Tensor, t: Tensor, weight: Tensor) -> Tensor:
    """Velocity-space loss of an x-prediction: ||v̂ − v||² = ||x̂ − x||² / (1 − t)², averaged under ``weight``."""
    remaining = (1 - t).clamp(min=MIN_REMAINING_T).view(-1, 1, 1, 1)
    squared = ((predicted - clean) / remaining) ** 2 * weight
    return squared.sum() / (weight.expand_as(squared).sum() + 1e-8)


def sample(denoise: Denoise, noise: Tensor, steps: int) -> Tensor:
    """Euler integration from t = 0 to t = 1 in ``steps`` uniform steps; returns the final x̂_1.

    A pure function: ``denoise`` can be any callable meeting the contract (a module, an engine wrapper).
    """
    x = noise
    times = [k / steps for k in range(steps + 1)]
    for current, following in zip(times[:-1], times[1:], strict=True):
        t = torch.full((noise.shape[0],), current, dtype=noise.dtype, device=noise.device)
        predicted = denoise(x, t)
        # Euler step on v̂ = (x̂ − x) / (1 − t): x ← x + (t' − t) / (1 − t) · (x̂ − x); the last step lands on x̂.
        x = x + ((following - current) / (1 - current)) * (predicted - x)
    return x
