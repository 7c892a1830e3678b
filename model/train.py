"""Training the flow-matching renderer on one avatar pack."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from avatar.pack import AvatarPack
from model.checkpoint import CHECKPOINT_FILE, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import PackSampler
from model.flow import interpolate, sample_time, velocity_loss
from model.networks import TwinDenoiser
from twincast.errors import InputError
from twincast.files import atomic_write_bytes


@dataclass(frozen=True)
class TrainResult:
    """Where the run was written and how training went."""

    run: Path
    steps: int
    final_loss: float
    seconds: float


def pick_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(pack_path: Path, out: Path, model_config: ModelConfig, train_config: TrainConfig, *,
          force: bool = False, progress: bool = True) -> TrainResult:
    """Train a renderer on ``pack_path`` and write ``out/checkpoint.pt`` and ``out/train.json``.

    Raises:
        InputError: ``out`` already holds a run (and ``force`` is false), or the model does not fit the pack.
    """
    pack = AvatarPack.load(pack_path)
    if (out / CHECKPOINT_FILE).exists() and not force:
        raise InputError(f"{out} already holds a run; choose another --out or pass --force to overwrite it")
    if (model_config.crop_px, model_config.mask_top) != (pack.meta.crop_px, pack.meta.mask_top):
        raise InputError(
            f"model crop_px/mask_top {model_config.crop_px}/{model_config.mask_top} do not match the pack's "
            f"{pack.meta.crop_px}/{pack.meta.mask_top}"
        )
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(train_config.threads or os.cpu_count() or 1)
    torch.manual_seed(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    sampler = PackSampler(pack)
    network = TwinDenoiser(model_config).to(device)
    ema = copy.deepcopy(network).eval() if train_config.ema_decay > 0 else None
    optimizer = torch.optim.AdamW(network.parameters(), lr=train_config.learning_rate,
                                  weight_decay=train_config.weight_decay)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
    pack_info = {"path": str(pack_path), "source_sha256": pack.meta.source["sha256"],
                 "crop_px": pack.meta.crop_px, "mask_top": pack.meta.mask_top, "fps": pack.meta.fps}
    losses: list[float] = []
    started = time.monotonic()
    bar = tqdm(range(train_config.steps), desc=f"train {model_config.preset}", unit="step", disable=not progress)
    for step in bar:
        batch = sampler.draw(train_config.batch_size, generator)
        target, reference, mel = (x.to(device) for x in (batch.target, batch.reference, batch.mel))
        size = target.shape[0]
        t = sample_time(size, train_config.time_mean, train_config.time_std, generator).to(device)
        noise = torch.randn(target.shape, generator=generator).to(device)
        keep = (torch.rand(size, generator=generator) >= train_config.audio_dropout).float().to(device)
        x_t = interpolate(target, noise, t)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_config)
        if autocast is not None:
            with autocast:
                predicted = network(x_t, t, target, reference, mel, keep)
        else:
            predicted = network(x_t, t, target, reference, mel, keep)
        loss = velocity_loss(predicted.float(), target, t, network.mask)
        if not torch.isfinite(loss):
            raise InputError(f"training diverged at step {step} (loss {loss.item()}); lower --learning-rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
        optimizer.step()
        if ema is not None:
            with torch.no_grad():
                for averaged, live in zip(ema.parameters(), network.parameters(), strict=True):
                    averaged.lerp_(live, 1 - train_config.ema_decay)
        losses.append(float(loss.item()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        every = train_config.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < train_config.steps:
            _save(out, model_config, train_config, ema or network, step + 1, pack_info, losses)
    seconds = time.monotonic() - started
    _save(out, model_config, train_config, ema or network, train_config.steps, pack_info, losses)
    tail = losses[-min(50, len(losses)):]
    final_loss = sum(tail) / len(tail)
    report = {
        "preset": model_config.preset,
        "steps": train_config.steps,
        "seconds": round(seconds, 2),
        "device": str(device),
        "final_loss": final_loss,
        "loss_every_10": [round(v, 5) for v in losses[::10]],
        "parameters": sum(p.numel() for p in network.parameters()),
        "model": asdict(model_config),
        "train": asdict(train_config),
        "pack": pack_info,
    }
    atomic_write_bytes(out / "train.json", json.dumps(report, indent=1).encode())
    return TrainResult(run=out, steps=train_config.steps, final_loss=final_loss, seconds=seconds)


def _save(out: Path, model_config: ModelConfig, train_config: TrainConfig, network: TwinDenoiser, step: int,
          pack_info: dict[str, object], losses: list[float]) -> None:
    save_checkpoint(out / CHECKPOINT_FILE, model=model_config, train=train_config, state_dict=network.state_dict(),
                    step=step, pack=pack_info, extra={"loss_last": losses[-1] if losses else None})
