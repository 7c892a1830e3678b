"""Training on one avatar pack: the flow-matching teacher, or the 1-step regression baseline.

Both use the same network. The teacher learns x-prediction flow matching (velocity loss); the baseline sees
pure noise at t = 0 and regresses the crop with an L1 loss, so it is exactly a 1-step renderer and shows what
the diffusion buys. ``resume-<role>.pt`` (optimiser, weights, random state) is kept beside the checkpoint, so a
crashed run continues exactly where it stopped, and a finished one can be extended with more steps.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from avatar.pack import AvatarPack
from model.autoencoder import check_latent_space, load_autoencoder
from model.checkpoint import ROLE_FILES, resume_file, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import Batch, PackSampler, Sampler
from model.flow import interpolate, sample_time, velocity_loss
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
    warmup_cosine,
)
from model.networks import TwinDenoiser
from twincast.errors import InputError
from twincast.files import atomic_write_bytes

REPORT_FILES = {"teacher": "train.json", "baseline": "baseline.json"}


@dataclass(frozen=True)
class TrainResult:
    """Where the run was written and how training went."""

    run: Path
    role: str
    steps: int
    final_loss: float
    seconds: float


def learning_rate(step: int, config: TrainConfig) -> float:
    """The renderer's learning rate at ``step`` (``warmup_cosine`` with the config's settings)."""
    return warmup_cosine(step, config.steps, config.warmup_steps, config.learning_rate)


def role_of(config: TrainConfig) -> str:
    """Which checkpoint role an objective trains."""
    return "teacher" if config.objective == "flow" else "baseline"


def flow_step(network: TwinDenoiser, batch: Batch, config: TrainConfig, generator: torch.Generator,
              device: torch.device) -> Tensor:
    """The teacher's loss on one batch: x-prediction flow matching in velocity space."""
    target, reference, mel = (x.to(device) for x in (batch.target, batch.reference, batch.mel))
    size = target.shape[0]
    with torch.no_grad():
        clean = network.to_space(target).float()
    t = sample_time(size, config.time_mean, config.time_std, generator).to(device)
    noise = torch.randn(clean.shape, generator=generator).to(device)
    keep = (torch.rand(size, generator=generator) >= config.audio_dropout).float().to(device)
    predicted = network(interpolate(clean, noise, t), t, target, reference, mel, keep)
    return velocity_loss(predicted.float(), clean, t, network.loss_mask)


def regression_step(network: TwinDenoiser, batch: Batch, config: TrainConfig, generator: torch.Generator,
                    device: torch.device) -> Tensor:
    """The baseline's loss on one batch: L1 to the crop from pure noise at t = 0 (a 1-step renderer).

    Latent models decode their prediction, so the L1 is on pixels for both kinds.
    """
    target, reference, mel = (x.to(device) for x in (batch.target, batch.reference, batch.mel))
    size = target.shape[0]
    noise = torch.randn(network.noise_shape(size), generator=generator).to(device)
    condition = network.condition(target, reference, mel)
    predicted = network.finish(network.denoise(noise, torch.zeros(size, device=device), condition), condition)
    weight = network.mask
    return ((predicted.float() - target).abs() * weight).sum() / (weight.expand_as(target).sum() + 1e-8)


def train(pack_path: Path, out: Path, model_config: ModelConfig, train_config: TrainConfig, *,
          force: bool = False, resume: bool = False, half: bool = False, progress: bool = True,
          on_step: StepObserver | None = None, init_from: Path | None = None,
          freeze: tuple[str, ...] = ()) -> TrainResult:
    """Train on ``pack_path``; writes the role's checkpoint and report into the run directory ``out``.

    ``on_step``, when given, is told after every step how far training is (``model.loop.StepReport``).
    ``init_from``, when given, is a prior's directory (``model.prior``): its weights are loaded into the network
    before step 0 (the denoiser only: a latent model keeps the run's autoencoder, which must have been made from
    the prior's shared one, ``train_autoencoder(..., init_from=)``), and the checkpoint and report record it
    (``init_from``: path and the hash of the prior's model card). ``freeze`` names top-level modules of the network
    (``TwinDenoiser``: ``audio``, ``down``, ``up``, …) whose weights stay as the start had them, for fine-tuning
    part of a prior; the report records them (``frozen``).

    Raises:
        InputError: ``out`` already holds this role (and neither ``force`` nor ``resume``), ``resume`` without
            a resumable state, a model that does not fit the pack, a prior whose model differs, or a latent
            prior whose autoencoder the run's did not come from.
    """
    role = role_of(train_config)
    pack = AvatarPack.load(pack_path)
    check_fits(model_config, pack)
    prepare_run(out, role, force=force, resume=resume)
    device, generator = seeded_device(train_config.threads, train_config.seed, train_config.device)
    sampler = PackSampler(pack)
    network = TwinDenoiser(model_config)
    if network.autoencoder is not None:
        network.autoencoder.load_state_dict(load_autoencoder(out, model_config).state_dict())
        network.autoencoder.requires_grad_(False)
    origin = None
    if init_from is not None:
        from model.prior_card import initialise_from

        origin = initialise_from(network, init_from)
        if network.autoencoder is not None:
            check_latent_space(out, init_from)
    freeze_modules(network, freeze)
    info = pack_info(pack, pack_path)
    outcome = fit(network, sampler, out, role, train_config, device=device, generator=generator, pack=info,
                  resume=resume, half=half, progress=progress, on_step=on_step,
                  extra={"init_from": origin} if origin is not None else None)
    report = {**outcome.report(role, model_config, train_config, network), "pack": info, "init_from": origin,
              "frozen": list(freeze)}
    atomic_write_bytes(out / REPORT_FILES[role], json.dumps(report, indent=1).encode())
    return TrainResult(run=out, role=role, steps=train_config.steps, final_loss=outcome.final_loss,
                       seconds=outcome.seconds)


def freeze_modules(network: TwinDenoiser, names: tuple[str, ...]) -> None:
    """Stop training the top-level modules ``names`` of ``network``.

    Raises:
        InputError: a name that is not a top-level module with weights (the ones there are, listed).
    """
    modules = {name: module for name, module in network.named_children()
               if name != "autoencoder" and any(True for _ in module.parameters())}
    unknown = [name for name in names if name not in modules]
    if unknown:
        raise InputError(f"cannot freeze {unknown}: expected top-level modules of the network, {sorted(modules)}")
    for name in names:
        modules[name].requires_grad_(False)


def prepare_run(out: Path, role: str, *, force: bool, resume: bool) -> None:
    """Make the run directory ``out``, refusing to overwrite a role's checkpoint by mistake.

    Raises:
        InputError: ``resume`` without a resumable state, or ``out`` already holds the role and neither
            ``force`` nor ``resume`` was given.
    """
    state_file = out / resume_file(role)
    if resume and not state_file.is_file():
        raise InputError(f"--resume: {out} has no {state_file.name} to continue from")
    target_file = out / ROLE_FILES[role]
    if target_file.exists() and not (force or resume):
        raise InputError(f"{out} already holds a {role} ({target_file.name}); choose another --out, --resume, "
                         "or pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class LoopOutcome:
    """What ``fit`` did: the losses of every step, the wall time and the device."""

    losses: list[float]
    seconds: float
    device: torch.device

    @property
    def final_loss(self) -> float:
        """The mean of the last losses (``recent_loss``)."""
        return recent_loss(self.losses)

    def report(self, role: str, model_config: ModelConfig, train_config: TrainConfig,
               network: torch.nn.Module) -> dict[str, Any]:
        """The report fields every trainer of this loop writes."""
        return {
            "role": role,
            "preset": model_config.preset,
            "steps": train_config.steps,
            "seconds": round(self.seconds, 2),
            "device": str(self.device),
            "final_loss": self.final_loss,
            "loss_every_10": [round(v, 5) for v in self.losses[::10]],
            "parameters": sum(p.numel() for p in network.parameters()),
            "model": asdict(model_config),
            "train": asdict(train_config),
        }


def fit(network: TwinDenoiser, sampler: Sampler, out: Path, role: str, train_config: TrainConfig, *,
        device: torch.device, generator: torch.Generator, pack: dict[str, Any], resume: bool = False,
        half: bool = False, progress: bool = True, on_step: StepObserver | None = None,
        extra: dict[str, Any] | None = None) -> LoopOutcome:
    """The training loop every renderer trainer shares: ``train_config.steps`` optimiser steps on batches from
    ``sampler`` (with the role's loss, the warm-up/cosine rate, mixed precision and the EMA of weights), with a
    resumable state and a checkpoint every ``checkpoint_every`` steps, and the final checkpoint in ``out``.

    ``network`` arrives built and initialised (its autoencoder loaded, a prior's weights in); ``pack`` and
    ``extra`` are what the checkpoint records about its data and its start.

    Raises:
        InputError: ``resume`` from a state of another role, or the loss diverged.
    """
    model_config = network.config
    target_file = out / ROLE_FILES[role]
    state_file = out / resume_file(role)
    network = network.to(device)
    ema = copy.deepcopy(network).eval() if train_config.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(network.trainable(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    start_step, losses = 0, list[float]()
    if resume:
        start_step, losses = _restore(state_file, role, network, ema, optimizer, generator)
    step_loss = flow_step if train_config.objective == "flow" else regression_step
    started = time.monotonic()
    bar = tqdm(range(start_step, train_config.steps), initial=start_step, total=train_config.steps,
               desc=f"train {model_config.preset} {role}", unit="step", disable=not progress)

    def checkpoint(step: int) -> None:
        save_checkpoint(target_file, model=model_config, train=train_config, state_dict=(ema or network).state_dict(),
                        step=step, pack=pack, extra=extra, role=role, half=half)

    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_config)
        batch = sampler.draw(train_config.batch_size, generator)
        with mixed_precision(device):
            loss = step_loss(network, batch, train_config, generator, device)
        if not torch.isfinite(loss):
            raise InputError(f"training diverged at step {step} (loss {loss.item()}); lower --learning-rate")
        losses.append(optimise(optimizer, loss, network.trainable()))
        if ema is not None:
            update_ema(ema, network, train_config.ema_decay)
        show_loss(bar, step, losses)
        if on_step is not None:
            on_step(StepReport(role, step + 1, train_config.steps, recent_loss(losses), ema or network))
        every = train_config.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < train_config.steps:
            save_resume(state_file, role, step + 1, network, ema, optimizer, generator, losses)
            checkpoint(step + 1)
    seconds = time.monotonic() - started
    checkpoint(train_config.steps)
    save_resume(state_file, role, train_config.steps, network, ema, optimizer, generator, losses)
    return LoopOutcome(losses=losses, seconds=seconds, device=device)


def save_resume(path: Path, role: str, step: int, network: torch.nn.Module, ema: torch.nn.Module | None,
                optimizer: torch.optim.Optimizer, generator: torch.Generator, losses: list[float]) -> None:
    """Everything needed to continue training exactly where it stopped, written atomically."""
    import io

    buffer = io.BytesIO()
    torch.save({"role": role, "step": step, "network": network.state_dict(),
                "ema": ema.state_dict() if ema is not None else None, "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "losses": losses}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _restore(path: Path, role: str, network: torch.nn.Module, ema: torch.nn.Module | None,
             optimizer: torch.optim.Optimizer, generator: torch.Generator) -> tuple[int, list[float]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state["role"] != role:
        raise InputError(f"{path} continues a {state['role']} run, not a {role} run")
    network.load_state_dict(state["network"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["losses"])
