"""Consistency distillation: a few-step student from the flow-matching teacher.

The student starts as a copy of the teacher and learns to map any point x_t of a teacher trajectory straight
to the trajectory's end (Song et al. 2023, "Consistency Models", Alg. 2): for adjacent times t_n < t_{n+1} the
teacher moves x_{t_n} to x_{t_{n+1}} with one Heun step, and the student's prediction at (x_{t_n}, t_n) is
pulled toward the prediction of a slow EMA copy of itself at (x_{t_{n+1}}, t_{n+1}) (the target network θ⁻
of Song et al. 2023, eq. 8; with θ⁻ = θ, as iCT uses for consistency training, distillation from this
teacher drifted: the loss grew 40× in 170 steps) under a pseudo-Huber loss (Song & Dhariwal 2023,
"Improved Techniques for Training Consistency Models", sec. 3.3). At the last interval the target is the
teacher's own clean estimate (the boundary).

With x-prediction the flow sampler's Euler step on a uniform grid is exactly multistep consistency sampling
with the noise reused, so the student is sampled by the same ``model.flow.sample`` for 1 and 2 steps.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from avatar.pack import AvatarPack
from model.checkpoint import ROLE_FILES, load_checkpoint, save_checkpoint
from model.config import check_device_name
from model.data import Batch, PackSampler, Sampler
from model.flow import interpolate
from model.loop import (
    StepObserver,
    StepReport,
    check_fits,
    mixed_precision,
    optimise,
    pack_info,
    recent_loss,
    seeded_device,
    show_loss,
    update_ema,
)
from model.networks import Condition, TwinDenoiser
from model.prior_card import initialise_from
from twincast.errors import InputError, NotFoundError
from twincast.files import atomic_write_bytes


@dataclass(frozen=True)
class DistillConfig:
    """Consistency distillation settings."""

    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-4
    intervals: int = 16  # teacher grid: t_n = n / intervals
    target_decay: float = 0.99  # EMA of the student that provides the consistency target (θ⁻)
    ema_decay: float = 0.995
    sample_steps: int = 2  # what export uses for the student by default
    seed: int = 0
    threads: int = 0
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda or cuda:N

    def __post_init__(self) -> None:
        check_device_name(self.device, "distill device")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"distill steps ({self.steps}) and batch_size ({self.batch_size}) must be ≥ 1")
        if not 2 <= self.intervals <= 1000:
            raise InputError(f"distill intervals {self.intervals} must be in 2..1000")
        if not 0.0 < self.learning_rate < 1.0:
            raise InputError(f"distill learning_rate {self.learning_rate} must be in (0, 1)")
        if not 0.0 <= self.target_decay < 1.0:
            raise InputError(f"distill target_decay {self.target_decay} must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"distill ema_decay {self.ema_decay} must be in [0, 1)")


TINY_DISTILL = DistillConfig(steps=60, batch_size=8, learning_rate=5e-4, intervals=8, ema_decay=0.0)
DISTILL_PRESETS = {"tiny": TINY_DISTILL, "tiny-latent": TINY_DISTILL,
                   "demo": DistillConfig(), "base": DistillConfig(steps=20000, batch_size=64, learning_rate=5e-5)}


@dataclass(frozen=True)
class DistillResult:
    """Where the student was written and how distillation went."""

    student: Path
    steps: int
    final_loss: float
    seconds: float


def pseudo_huber(predicted: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Per-sample pseudo-Huber distance over the weighted region, averaged over the batch.

    d(a, b) = sqrt(||a − b||² + c²) − c with c = 0.00054 · sqrt(dim) (iCT, Song & Dhariwal 2023, sec. 3.3).
    """
    region = weight.expand_as(predicted)
    squared = (((predicted - target) * region) ** 2).flatten(1).sum(dim=1)
    dim = float(region[0].sum())
    c = 0.00054 * math.sqrt(dim)
    return (torch.sqrt(squared + c * c) - c).mean()


def teacher_step(teacher: TwinDenoiser, condition: Condition, x: Tensor, t: Tensor,
                 t_next: Tensor) -> Tensor:
    """One Heun step of the teacher's probability-flow ODE from t to t_next (Euler where t_next = 1)."""
    predicted = teacher.denoise(x, t, condition)
    velocity = (predicted - x) / (1 - t).view(-1, 1, 1, 1)
    delta = (t_next - t).view(-1, 1, 1, 1)
    euler = x + delta * velocity
    interior = (t_next < 1).view(-1, 1, 1, 1)
    safe_next = torch.where(t_next < 1, t_next, torch.zeros_like(t_next))
    second = (teacher.denoise(euler, safe_next, condition) - euler) / (1 - safe_next).view(-1, 1, 1, 1)
    heun = x + delta * 0.5 * (velocity + second)
    return torch.where(interior, heun, predicted)


@dataclass
class Distiller:
    """The networks of one distillation: the frozen teacher, the student being trained, the slow EMA of the
    student that gives the consistency target (θ⁻), the optional EMA kept for the result, and the optimiser."""

    teacher: TwinDenoiser
    student: TwinDenoiser
    target_network: TwinDenoiser
    ema: TwinDenoiser | None
    optimizer: torch.optim.Optimizer
    init_from: dict[str, Any] | None = None  # the prior student the student started from (``initialise_from``)

    @classmethod
    def start(cls, teacher: TwinDenoiser, config: DistillConfig, *, init_from: Path | None = None) -> Distiller:
        """Begin from ``teacher`` (already on its device): the student and θ⁻ start as copies of it, or, with
        ``init_from`` (a prior holding a distilled student), as the prior's student (all but a latent model's
        autoencoder, which stays the person's).

        Raises:
            NotFoundError, InputError: ``init_from`` is not a prior with a student that fits the teacher's model.
        """
        teacher.requires_grad_(False)
        student = copy.deepcopy(teacher).train().requires_grad_(True)
        origin = None if init_from is None else initialise_from(student, init_from, role="student")
        if student.autoencoder is not None:  # the person's autoencoder stays as trained
            student.autoencoder.requires_grad_(False)
        ema = copy.deepcopy(student).eval().requires_grad_(False) if config.ema_decay > 0 else None
        target_network = copy.deepcopy(student).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(student.trainable(), lr=config.learning_rate, weight_decay=0.0)
        return cls(teacher, student, target_network, ema, optimizer, origin)

    def step(self, batch: Batch, config: DistillConfig, generator: torch.Generator, device: torch.device) -> float:
        """One consistency-distillation step on ``batch``; returns its loss."""
        autocast = mixed_precision(device)
        target, reference, mel = (x.to(device) for x in (batch.target, batch.reference, batch.mel))
        size = target.shape[0]
        index = torch.randint(config.intervals, (size,), generator=generator)
        t = (index.float() / config.intervals).to(device)
        t_next = ((index + 1).float() / config.intervals).to(device)
        with torch.no_grad(), autocast:
            clean = self.teacher.to_space(target).float()
        noise = torch.randn(clean.shape, generator=generator).to(device)
        x_t = interpolate(clean, noise, t)
        with torch.no_grad(), autocast:
            teacher_condition = self.teacher.condition(target, reference, mel)
            x_next = teacher_step(self.teacher, teacher_condition, x_t, t, t_next).float()
            consistent = self.target_network.denoise(x_next, t_next,
                                                     self.target_network.condition(target, reference, mel))
            boundary = (t_next >= 1).view(-1, 1, 1, 1)
            goal = torch.where(boundary, x_next, consistent.float())
        with autocast:
            predicted = self.student(x_t, t, target, reference, mel)
        loss = pseudo_huber(predicted.float(), goal, self.student.loss_mask)
        value = optimise(self.optimizer, loss, self.student.trainable())
        update_ema(self.target_network, self.student, config.target_decay)
        if self.ema is not None:
            update_ema(self.ema, self.student, config.ema_decay)
        return value

    @property
    def result(self) -> TwinDenoiser:
        """The weights to keep: the EMA when there is one, else the student."""
        return self.ema or self.student


def run_distillation(distiller: Distiller, sampler: Sampler, config: DistillConfig, device: torch.device,
                     generator: torch.Generator, *, progress: bool = True,
                     on_step: StepObserver | None = None) -> tuple[list[float], float]:
    """``config.steps`` steps of ``distiller`` on batches from ``sampler``; returns the losses and the seconds."""
    losses: list[float] = []
    started = time.monotonic()
    bar = tqdm(range(config.steps), desc="distill", unit="step", disable=not progress)
    for step in bar:
        losses.append(distiller.step(sampler.draw(config.batch_size, generator), config, generator, device))
        show_loss(bar, step, losses)
        if on_step is not None:
            on_step(StepReport("student", step + 1, config.steps, recent_loss(losses), distiller.result))
    return losses, time.monotonic() - started


def distill(run: Path, config: DistillConfig, *, pack_path: Path | None = None, force: bool = False,
            half: bool = False, progress: bool = True, on_step: StepObserver | None = None,
            init_from: Path | None = None) -> DistillResult:
    """Distil ``run``'s teacher into ``run/student.pt``.

    ``on_step``, when given, is told after every step how far distillation is (``model.loop.StepReport``).
    ``init_from``, when given, is a prior holding a distilled student (``model.prior.distill_prior``): the
    student starts from it instead of from a copy of the teacher, and the checkpoint and ``distill.json`` record
    it (``init_from``).

    Raises:
        NotFoundError: no teacher in ``run``, or its pack is gone (pass ``pack_path``), or ``init_from`` holds
            no student.
        InputError: a student exists already and ``force`` is false, or ``init_from``'s student does not fit.
    """
    teacher_checkpoint = load_checkpoint(run, "teacher")
    out = run / ROLE_FILES["student"]
    if out.exists() and not force:
        raise InputError(f"{run} already holds a student ({out.name}); pass --force to overwrite it")
    pack_path = pack_path or Path(teacher_checkpoint.pack["path"])
    if not (pack_path / "avatar.json").is_file():
        raise NotFoundError(f"the teacher's avatar pack {pack_path} is not there; pass --pack")
    pack = AvatarPack.load(pack_path)
    check_fits(teacher_checkpoint.model, pack)
    device, generator = seeded_device(config.threads, config.seed, config.device)
    distiller = Distiller.start(teacher_checkpoint.build().to(device), config, init_from=init_from)
    losses, seconds = run_distillation(distiller, PackSampler(pack), config, device, generator, progress=progress,
                                       on_step=on_step)
    final = distiller.result.eval()
    model_config = replace(teacher_checkpoint.model, sample_steps=config.sample_steps)
    save_checkpoint(out, model=model_config, train=teacher_checkpoint.train, state_dict=final.state_dict(),
                    step=config.steps, pack=pack_info(pack, pack_path), role="student", half=half,
                    extra={"distill": asdict(config), "teacher_step": teacher_checkpoint.step,
                           "init_from": distiller.init_from})
    final_loss = recent_loss(losses)
    report = {"role": "student", "steps": config.steps, "seconds": round(seconds, 2), "device": str(device),
              "final_loss": final_loss, "loss_every_10": [round(v, 5) for v in losses[::10]],
              "distill": asdict(config), "init_from": distiller.init_from}
    atomic_write_bytes(run / "distill.json", json.dumps(report, indent=1).encode())
    return DistillResult(student=out, steps=config.steps, final_loss=final_loss, seconds=seconds)
