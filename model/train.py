"""Training on one avatar pack: the flow-matching teacher, or the 1-step regression baseline.

Both use the same network. The teacher learns x-prediction flow matching (velocity loss); the baseline sees
pure noise at t = 0 and regresses the crop with an L1 loss, so it is exactly a 1-step renderer and shows what
the diffusion buys. ``resume-<role>.pt`` (optimiser, weights, random state) is kept beside the checkpoint, so a
crashed run continues exactly where it stopped, and a finished one can be extended with more steps.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from avatar.pack import AvatarPack
from model.autoencoder import load_autoencoder
from model.checkpoint import ROLE_FILES, resume_file, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import Batch, PackSampler
from model.flow import interpolate, sample_time, velocity_loss
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


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seeded_device(threads: int, seed: int) -> tuple[torch.device, torch.Generator]:
    """The training device (on CPU with ``threads`` threads, 0 = all cores), torch seeded, and a batch generator."""
    device = pick_device()
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


def learning_rate(step: int, config: TrainConfig) -> float:
    """The renderer's learning rate at ``step`` (``warmup_cosine`` with the config's settings)."""
    return warmup_cosine(step, config.steps, config.warmup_steps, config.learning_rate)


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


def role_of(config: TrainConfig) -> str:
    """Which checkpoint role an objective trains."""
    return "teacher" if config.objective == "flow" else "baseline"


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
          force: bool = False, resume: bool = False, half: bool = False, progress: bool = True) -> TrainResult:
    """Train on ``pack_path``; writes the role's checkpoint and report into the run directory ``out``.

    Raises:
        InputError: ``out`` already holds this role (and neither ``force`` nor ``resume``), ``resume`` without
            a resumable state, or a model that does not fit the pack.
    """
    role = role_of(train_config)
    target_file = out / ROLE_FILES[role]
    pack = AvatarPack.load(pack_path)
    check_fits(model_config, pack)
    state_file = out / resume_file(role)
    if resume and not state_file.is_file():
        raise InputError(f"--resume: {out} has no {state_file.name} to continue from")
    if target_file.exists() and not (force or resume):
        raise InputError(f"{out} already holds a {role} ({target_file.name}); choose another --out, --resume, "
                         "or pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    device, generator = seeded_device(train_config.threads, train_config.seed)
    sampler = PackSampler(pack)
    network = TwinDenoiser(model_config)
    if network.autoencoder is not None:
        network.autoencoder.load_state_dict(load_autoencoder(out, model_config).state_dict())
        network.autoencoder.requires_grad_(False)
    network = network.to(device)
    ema = copy.deepcopy(network).eval() if train_config.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(network.trainable(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    start_step, losses = 0, list[float]()
    if resume:
        start_step, losses = _restore(state_file, role, network, ema, optimizer, generator)
    step_loss = flow_step if train_config.objective == "flow" else regression_step
    info = pack_info(pack, pack_path)
    started = time.monotonic()
    bar = tqdm(range(start_step, train_config.steps), initial=start_step, total=train_config.steps,
               desc=f"train {model_config.preset} {role}", unit="step", disable=not progress)
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
        every = train_config.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < train_config.steps:
            save_resume(state_file, role, step + 1, network, ema, optimizer, generator, losses)
            save_checkpoint(target_file, model=model_config, train=train_config,
                            state_dict=(ema or network).state_dict(), step=step + 1, pack=info, role=role, half=half)
    seconds = time.monotonic() - started
    save_checkpoint(target_file, model=model_config, train=train_config, state_dict=(ema or network).state_dict(),
                    step=train_config.steps, pack=info, role=role, half=half)
    save_resume(state_file, role, train_config.steps, network, ema, optimizer, generator, losses)
    final_loss = recent_loss(losses)
    report = {
        "role": role,
        "preset": model_config.preset,
        "steps": train_config.steps,
        "seconds": round(seconds, 2),
        "device": str(device),
        "final_loss": final_loss,
        "loss_every_10": [round(v, 5) for v in losses[::10]],
        "parameters": sum(p.numel() for p in network.parameters()),
        "model": asdict(model_config),
        "train": asdict(train_config),
        "pack": info,
    }
    atomic_write_bytes(out / REPORT_FILES[role], json.dumps(report, indent=1).encode())
    return TrainResult(run=out, role=role, steps=train_config.steps, final_loss=final_loss, seconds=seconds)


def update_ema(ema: torch.nn.Module, network: torch.nn.Module, decay: float) -> None:
    """Exponential moving average of weights: ema ← decay · ema + (1 − decay) · network."""
    with torch.no_grad():
        for averaged, live in zip(ema.parameters(), network.parameters(), strict=True):
            averaged.lerp_(live, 1 - decay)


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
