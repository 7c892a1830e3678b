"""The per-person autoencoder of latent models: face crop ⇄ latents at the UNet's resolution.

Trained first (``twincast train-ae``) on the person's own crops, with nothing downloaded: an L1 loss plus an
L1 loss on image gradients (keeps teeth and lip edges sharp), weighted toward the generated lower face, and
Gaussian noise on the latents during training so the decoder tolerates a denoiser's small errors. After
training the latents are standardised per channel (the statistics are buffers of the module), so flow
matching sees unit-variance data. The teacher, students and baseline carry a frozen copy; the renderer's
graph ends in its decoder.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from avatar.pack import AvatarPack
from model.checkpoint import ROLE_FILES, load_checkpoint, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import PackSampler, to_unit_range
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
    warmup_cosine,
)
from model.metrics import mouth_box, psnr
from model.networks import Autoencoder, lower_mask
from model.prior_card import read_card
from twincast.errors import InputError, NotFoundError
from twincast.files import atomic_write_bytes, sha256_file

REPORT_FILE = "autoencoder.json"
LATENT_NOISE = 0.1  # std of the noise added to standardised latents while training the decoder
LOWER_FACE_WEIGHT = 4.0  # loss weight of the generated region relative to the known upper face
STATS_BATCH = 64


@dataclass(frozen=True)
class AutoencoderResult:
    """Where the autoencoder was written and how well it reconstructs the holdout block."""

    path: Path
    steps: int
    final_loss: float
    seconds: float
    holdout_psnr_face: float
    holdout_psnr_mouth: float


def reconstruction_loss(decoded: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """Weighted L1 on pixels plus weighted L1 on horizontal and vertical finite differences."""
    pixel = ((decoded - target).abs() * weight).mean()
    dx = (decoded.diff(dim=3) - target.diff(dim=3)).abs() * weight[..., :, 1:]
    dy = (decoded.diff(dim=2) - target.diff(dim=2)).abs() * weight[..., 1:, :]
    return pixel + dx.mean() + dy.mean()


def autoencoder_loss(autoencoder: Autoencoder, target: Tensor, weight: Tensor, device: torch.device) -> Tensor:
    """One batch's reconstruction loss, with noise on the latents so the decoder learns to tolerate it."""
    with mixed_precision(device):
        latents = autoencoder.encode_raw(target)
        noisy = latents + LATENT_NOISE * latents.detach().std() * torch.randn_like(latents)
        return reconstruction_loss(autoencoder.decode_raw(noisy).float(), target, weight)


def reconstruction_weight(config: ModelConfig, device: torch.device) -> Tensor:
    """The loss weight per pixel: ``LOWER_FACE_WEIGHT`` below the mask line, 1 above."""
    mask = lower_mask(config.crop_px, config.mask_top).to(device)
    return 1 + (LOWER_FACE_WEIGHT - 1) * mask


def load_autoencoder(run: Path, config: ModelConfig) -> Autoencoder:
    """The run's trained autoencoder, checked against the model config that will use it.

    Raises:
        NotFoundError: the run has no autoencoder (train one with ``twincast train-ae``).
        InputError: it was trained for another latent shape.
    """
    if not (run / ROLE_FILES["autoencoder"]).is_file():
        raise NotFoundError(f"{run} holds no autoencoder ({ROLE_FILES['autoencoder']}); the {config.preset} model "
                            f"works in latent space: run `twincast train-ae PACK --config {config.preset} "
                            f"--out {run}` first")
    checkpoint = load_checkpoint(run, "autoencoder")
    shape = (checkpoint.model.crop_px, checkpoint.model.patch_px, checkpoint.model.latent_channels,
             checkpoint.model.ae_channels)
    wanted = (config.crop_px, config.patch_px, config.latent_channels, config.ae_channels)
    if shape != wanted:
        raise InputError(f"{run}'s autoencoder has crop/patch/latent channels/widths {shape}; the model needs "
                         f"{wanted}: retrain it with `twincast train-ae --force`")
    autoencoder = Autoencoder(config)
    autoencoder.load_state_dict(checkpoint.state_dict)
    return autoencoder.eval()


def fit_autoencoder(autoencoder: Autoencoder, draw: Callable[[int, torch.Generator], Tensor],
                    model_config: ModelConfig, train_config: TrainConfig, device: torch.device,
                    generator: torch.Generator, *, progress: bool = True,
                    on_step: StepObserver | None = None) -> tuple[list[float], float]:
    """``train_config.autoencoder_steps`` steps of the reconstruction loss on the autoencoder's trainable
    parameters (all, or the decoder only when the encoder is frozen), batches of targets from ``draw(batch_size,
    generator)``; returns the losses and the seconds.

    Raises:
        InputError: the loss stopped being finite.
    """
    parameters = [parameter for parameter in autoencoder.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=train_config.autoencoder_learning_rate)
    weight = reconstruction_weight(model_config, device)
    steps = train_config.autoencoder_steps
    losses: list[float] = []
    started = time.monotonic()
    bar = tqdm(range(steps), desc="train-ae", unit="step", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, steps, max(1, steps // 20), train_config.autoencoder_learning_rate)
        target = draw(train_config.batch_size, generator).to(device)
        loss = autoencoder_loss(autoencoder, target, weight, device)
        if not torch.isfinite(loss):
            raise InputError(f"autoencoder training diverged at step {step}; lower autoencoder_learning_rate")
        losses.append(optimise(optimizer, loss, parameters))
        show_loss(bar, step, losses)
        if on_step is not None:
            on_step(StepReport("autoencoder", step + 1, steps, recent_loss(losses), autoencoder))
    return losses, time.monotonic() - started


def shared_autoencoder_file(prior: Path) -> Path:
    """The checkpoint of a latent prior's shared autoencoder (``model.prior.train_prior``).

    Raises:
        NotFoundError: ``prior`` is not a prior.
        InputError: the prior has no shared autoencoder (a pixel prior).
    """
    card = read_card(prior)
    directory = prior.parent if prior.is_file() else prior
    if "autoencoder" not in card:
        raise InputError(f"prior {directory} has no shared autoencoder (it is a {card.get('preset')} prior); a "
                         "latent twin can only start from a latent prior trained by twincast prior")
    return directory / ROLE_FILES["autoencoder"]


def prior_autoencoder(prior: Path, config: ModelConfig) -> tuple[Autoencoder, dict[str, Any]]:
    """A latent prior's shared autoencoder, checked against ``config``, and what a run records about it: the
    prior's path and the autoencoder checkpoint's SHA-256.

    Raises:
        NotFoundError: ``prior`` is not a prior.
        InputError: the prior has no shared autoencoder (a pixel prior), or it was made for another latent shape.
    """
    file = shared_autoencoder_file(prior)
    return load_autoencoder(file.parent, config), {"path": str(file.parent.resolve()),
                                                   "autoencoder_sha256": sha256_file(file)}


def check_latent_space(run: Path, prior: Path) -> None:
    """Refuse to start ``run``'s denoiser from a latent ``prior`` unless the run's autoencoder was made from the
    prior's (``train_autoencoder(..., init_from=prior)``): the prior's denoiser knows only its own latent space.

    Raises:
        InputError: the prior has no shared autoencoder, or the run's autoencoder did not come from it.
    """
    file = shared_autoencoder_file(prior)
    made_from = (load_checkpoint(run, "autoencoder").extra or {}).get("init_from") or {}
    if made_from.get("autoencoder_sha256") != sha256_file(file):
        raise InputError(f"{run}'s autoencoder was not made from prior {file.parent}'s, and the prior's denoiser "
                         f"knows only its own latent space: run `twincast train-ae PACK --from {file.parent} "
                         f"--out {run} --force` first")


def train_autoencoder(pack_path: Path, out: Path, model_config: ModelConfig, train_config: TrainConfig, *,
                      force: bool = False, half: bool = False, progress: bool = True,
                      on_step: StepObserver | None = None, init_from: Path | None = None) -> AutoencoderResult:
    """Train the person's autoencoder on ``pack_path``; writes ``autoencoder.pt`` and its report into ``out``.

    ``on_step``, when given, is told after every step how far training is (``model.loop.StepReport``).
    ``init_from``, when given, is a latent prior: the autoencoder starts as the prior's shared one and only its
    decoder is trained, on this person; the encoder and the latent statistics stay the prior's, so the prior's
    denoiser can start this twin's teacher (``model.train.train(..., init_from=)`` checks that).

    Raises:
        InputError: the config is not a latent model, the crop geometry differs from the pack's, ``out``
            already holds an autoencoder and ``force`` is false, or ``init_from`` has no autoencoder that fits.
    """

    if not model_config.latent:
        raise InputError(f"the {model_config.preset} model works on pixels and needs no autoencoder; "
                         "train-ae is for latent models such as base")
    target_file = out / ROLE_FILES["autoencoder"]
    if target_file.exists() and not force:
        raise InputError(f"{out} already holds an autoencoder ({target_file.name}); pass --force to overwrite it")
    pack = AvatarPack.load(pack_path)
    check_fits(model_config, pack)
    origin = None
    if init_from is not None:
        autoencoder, origin = prior_autoencoder(init_from, model_config)
        autoencoder.encoder.requires_grad_(False)
    else:
        autoencoder = Autoencoder(model_config)
    out.mkdir(parents=True, exist_ok=True)
    device, generator = seeded_device(train_config.threads, train_config.seed, train_config.device)
    sampler = PackSampler(pack)
    autoencoder.to(device).train()
    losses, seconds = fit_autoencoder(autoencoder, lambda size, gen: sampler.draw(size, gen).target, model_config,
                                      train_config, device, generator, progress=progress, on_step=on_step)
    autoencoder.eval()
    if init_from is None:  # a prior's latent space is kept as it is: its encoder and its statistics
        standardise(autoencoder, sampler.crops[torch.from_numpy(sampler.indices)], device)
    face, mouth = holdout_psnr(autoencoder, pack, device)
    steps = train_config.autoencoder_steps
    save_checkpoint(target_file, model=model_config, train=train_config, state_dict=autoencoder.state_dict(),
                    step=steps, pack=pack_info(pack, pack_path), role="autoencoder", half=half,
                    extra={"init_from": origin} if origin is not None else None)
    final_loss = recent_loss(losses)
    report = {"role": "autoencoder", "preset": model_config.preset, "steps": steps, "seconds": round(seconds, 2),
              "device": str(device), "final_loss": final_loss, "loss_every_10": [round(v, 5) for v in losses[::10]],
              "parameters": sum(p.numel() for p in autoencoder.parameters()),
              "holdout_psnr_face": round(face, 3), "holdout_psnr_mouth": round(mouth, 3),
              "latent_shape": list(autoencoder.latent_shape), "model": asdict(model_config), "init_from": origin}
    atomic_write_bytes(out / REPORT_FILE, json.dumps(report, indent=1).encode())
    return AutoencoderResult(path=target_file, steps=steps, final_loss=final_loss, seconds=seconds,
                             holdout_psnr_face=face, holdout_psnr_mouth=mouth)


@torch.no_grad()
def standardise(autoencoder: Autoencoder, crops_uint8: Tensor, device: torch.device) -> None:
    """Set the per-channel latent mean and std from the training crops (all of them, in batches)."""
    total = torch.zeros(autoencoder.latent_shape[0], dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for first in range(0, crops_uint8.shape[0], STATS_BATCH):
        latents = autoencoder.encode_raw(to_unit_range(crops_uint8[first:first + STATS_BATCH]).to(device))
        latents = latents.double().cpu()
        total += latents.sum(dim=(0, 2, 3))
        squares += (latents ** 2).sum(dim=(0, 2, 3))
        count += latents.shape[0] * latents.shape[2] * latents.shape[3]
    mean = total / count
    std = (squares / count - mean ** 2).clamp(min=1e-8).sqrt()
    autoencoder.latent_mean.copy_(mean.float().view(1, -1, 1, 1))
    autoencoder.latent_std.copy_(std.float().view(1, -1, 1, 1))


@torch.no_grad()
def holdout_psnr(autoencoder: Autoencoder, pack: AvatarPack, device: torch.device) -> tuple[float, float]:
    """Mean PSNR of the reconstructed holdout crops, whole crop and mouth box."""
    indices = pack.holdout_indices()
    if indices.size == 0:
        return math.nan, math.nan
    crops = np.asarray(pack.array("crops"))[indices]
    rows, cols = mouth_box(crops.shape[1])
    faces, mouths = [], []
    for first in range(0, len(crops), STATS_BATCH):
        truth = crops[first:first + STATS_BATCH]
        images = to_unit_range(torch.from_numpy(np.array(truth))).to(device)
        decoded = autoencoder.decode(autoencoder.encode(images)).clamp(-1, 1)
        rendered = ((decoded.permute(0, 2, 3, 1) + 1) * 127.5 + 0.5).clamp(0, 255).byte().cpu().numpy()
        for r, t in zip(rendered, truth, strict=True):
            faces.append(psnr(r, t))
            mouths.append(psnr(r[rows, cols], t[rows, cols]))
    return float(np.mean(faces)), float(np.mean(mouths))
