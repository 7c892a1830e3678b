"""A prior: the renderer's network trained on several people, that a new twin's training starts from.

``train_prior`` trains the teacher network (flow matching, the same loop as ``model.train.train``) on batches
from several avatar packs (``MultiPackSampler``: people drawn uniformly, each sample's reference from the same
person, augmented so the few people cover more of what a new person's footage looks like), and writes a prior
directory: ``checkpoint.pt`` (the teacher role), ``resume-teacher.pt`` and the model card ``prior.json`` (the
packs, their licences as the caller gave them, steps, batch, augmentation, seconds, final loss, date).

Using a prior (``model.prior_card``, which ``model.train`` imports without importing this module):
``initialise_from`` loads a prior's weights into a new twin's network before its first step (``twincast train
--from PRIOR``); ``shipped_prior`` finds the prior that ships for a preset under ``assets/prior/<preset>/``, which
``twincast create`` starts from by default.

``distill_prior`` distils a prior's teacher into a few-step prior student (``student.pt``, on the same packs and
augmentation; the card gains a ``student`` entry). A new twin's distillation can start from that student instead of
from a copy of the twin's own teacher (``twincast distill --from PRIOR``; the teacher's copy, the default, measured
far better). A latent prior also holds the autoencoder its people share (``train_shared_autoencoder``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar.pack import AvatarPack
from model.autoencoder import fit_autoencoder, holdout_psnr, load_autoencoder, standardise
from model.checkpoint import ROLE_FILES, load_checkpoint, save_checkpoint
from model.config import ModelConfig, TrainConfig
from model.data import Batch, PackSampler
from model.distill import DistillConfig, Distiller, DistillResult, run_distillation
from model.loop import StepObserver, check_fits, pack_info, recent_loss, seeded_device
from model.networks import Autoencoder, TwinDenoiser
from model.prior_card import CARD_FILE, CARD_KIND, CARD_VERSION, UNKNOWN_LICENCE, read_card
from model.train import TrainResult, fit, prepare_run
from twincast.errors import InputError, NotFoundError
from twincast.files import atomic_write_bytes, sha256_file


@dataclass(frozen=True)
class Augmentation:
    """How ``MultiPackSampler`` widens the data; each sample draws its own values, uniformly in these ranges, and
    its target and reference get the same transform (so the reference still shows the target's person, as lit
    and framed as the target).

    Colour works on pixels in 0..1: brightness multiplies them by a gain in [1 - brightness, 1 + brightness];
    contrast scales them about the sample's mean grey by a gain in [1 - contrast, 1 + contrast]; saturation
    scales each pixel's distance from its own grey by a gain in [1 - saturation, 1 + saturation]; the result is
    clipped to 0..1. Geometry: a horizontal mirror with probability ``flip``, then an affine about the crop's
    centre with a zoom in [1 - scale, 1 + scale] and a rotation in [-rotation_deg, +rotation_deg] degrees
    (bilinear, edges repeated).
    """

    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    flip: float = 0.5
    scale: float = 0.03
    rotation_deg: float = 3.0

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation", "scale"):
            if not 0.0 <= getattr(self, name) < 0.5:
                raise InputError(f"augmentation {name} {getattr(self, name)} must be in [0, 0.5)")
        if not 0.0 <= self.flip <= 1.0:
            raise InputError(f"augmentation flip {self.flip} must be a probability in [0, 1]")
        if not 0.0 <= self.rotation_deg <= 15.0:
            raise InputError(f"augmentation rotation_deg {self.rotation_deg} must be in [0, 15] degrees")


AUTOENCODER_REPORT = "autoencoder-prior.json"  # a latent prior's shared autoencoder: how it was trained
STANDARDISE_FRAMES = 2048  # training crops (spread over the people) its latent statistics are measured on
NO_AUGMENTATION = Augmentation(brightness=0.0, contrast=0.0, saturation=0.0, flip=0.0, scale=0.0, rotation_deg=0.0)


@dataclass(frozen=True)
class Draw:
    """The values one batch's augmentation drew, one per sample (gains, mirror flags, zoom, rotation)."""

    brightness: Tensor
    contrast: Tensor
    saturation: Tensor
    flipped: Tensor
    scale: Tensor
    rotation_deg: Tensor


def _uniform(size: int, half_width: float, centre: float, generator: torch.Generator) -> Tensor:
    """``size`` values uniform in [centre - half_width, centre + half_width]."""
    return centre + half_width * (2 * torch.rand(size, generator=generator) - 1)


def draw_augmentation(size: int, augmentation: Augmentation, generator: torch.Generator) -> Draw:
    """Per-sample values for ``size`` samples, within ``augmentation``'s ranges."""
    return Draw(brightness=_uniform(size, augmentation.brightness, 1.0, generator),
                contrast=_uniform(size, augmentation.contrast, 1.0, generator),
                saturation=_uniform(size, augmentation.saturation, 1.0, generator),
                flipped=torch.rand(size, generator=generator) < augmentation.flip,
                scale=_uniform(size, augmentation.scale, 1.0, generator),
                rotation_deg=_uniform(size, augmentation.rotation_deg, 0.0, generator))


def apply_augmentation(images: Tensor, draw: Draw) -> Tensor:
    """``images`` (B, 3, C, C) in [-1, 1] with each sample's drawn colour gains, mirror and affine."""
    unit = images.add(1.0).div(2.0)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    unit = unit * draw.brightness.view(-1, 1, 1, 1)
    mean = (unit * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    unit = (unit - mean) * draw.contrast.view(-1, 1, 1, 1) + mean
    grey = (unit * weights).sum(1, keepdim=True)
    unit = ((unit - grey) * draw.saturation.view(-1, 1, 1, 1) + grey).clamp(0.0, 1.0)
    unit = torch.where(draw.flipped.view(-1, 1, 1, 1), unit.flip(3), unit)
    if bool((draw.scale != 1.0).any() or (draw.rotation_deg != 0.0).any()):
        angle = draw.rotation_deg * (math.pi / 180.0)
        cos, sin = torch.cos(angle) / draw.scale, torch.sin(angle) / draw.scale
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(unit.shape), align_corners=False)
        unit = F.grid_sample(unit, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return unit.mul(2.0).sub(1.0)


def check_packs_agree(packs: list[AvatarPack]) -> None:
    """Refuse packs that could not share one network: another crop size, mask line, frame rate or mel spec.

    Raises:
        InputError: no packs, or naming the first pack that differs from the first one and in what.
    """
    if not packs:
        raise InputError("a prior needs at least one avatar pack")
    first = packs[0].meta
    for pack in packs[1:]:
        meta = pack.meta
        for what, mine, theirs in (("crop size (crop_px)", meta.crop_px, first.crop_px),
                                   ("mask line (mask_top)", meta.mask_top, first.mask_top),
                                   ("frame rate (fps)", meta.fps, first.fps),
                                   ("mel spec", dict(meta.mel), dict(first.mel))):
            if mine != theirs:
                raise InputError(f"avatar pack {pack.root} has {what} {mine}, but {packs[0].root} has {theirs}; "
                                 "every pack of a prior must be enrolled with the same settings")


class MultiPackSampler:
    """Batches from several packs: each sample's person is drawn uniformly, its target from that person's training
    frames (never the holdout block), its reference another training frame of the same person; then each sample
    is augmented (``Augmentation``), target and reference alike. The mel window is the target frame's."""

    def __init__(self, packs: list[AvatarPack], augmentation: Augmentation = Augmentation()) -> None:
        check_packs_agree(packs)
        self.samplers = [PackSampler(pack) for pack in packs]
        self.augmentation = augmentation
        self.last_draw: Draw | None = None  # the augmentation values of the latest batch (for tests and checks)

    def draw(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch of ``batch_size`` augmented samples, people drawn uniformly with ``generator``."""
        person = torch.randint(len(self.samplers), (batch_size,), generator=generator)
        crop = self.samplers[0].crops.shape[1]
        target = torch.empty((batch_size, 3, crop, crop))
        reference, mel = torch.empty_like(target), torch.empty((batch_size, *self.samplers[0].mel.shape[1:]))
        for index, sampler in enumerate(self.samplers):
            rows = (person == index).nonzero().flatten()
            if rows.numel():
                part = sampler.draw(int(rows.numel()), generator)
                target[rows], reference[rows], mel[rows] = part.target, part.reference, part.mel
        self.last_draw = draw_augmentation(batch_size, self.augmentation, generator)
        both = apply_augmentation(torch.cat([target, reference]), _twice(self.last_draw))
        return Batch(target=both[:batch_size], reference=both[batch_size:], mel=mel)


def _twice(draw: Draw) -> Draw:
    """``draw`` repeated, so a batch's targets and references (concatenated) get the same values."""
    return Draw(**{item.name: torch.cat([getattr(draw, item.name)] * 2) for item in fields(Draw)})


def train_prior(pack_paths: list[Path], out: Path, model_config: ModelConfig, train_config: TrainConfig, *,
                licences: list[str] | None = None, augmentation: Augmentation = Augmentation(), force: bool = False,
                resume: bool = False, half: bool = False, progress: bool = True,
                on_step: StepObserver | None = None) -> TrainResult:
    """Train the teacher network on every pack in ``pack_paths`` into ``out`` and write its model card.

    ``licences`` are the packs' licences as the caller states them, one per pack (``unknown`` for each when not
    given): twincast cannot know them and records them as told. A latent model (base) first gets an autoencoder
    the people share (``train_shared_autoencoder``, ``train_config.autoencoder_steps`` steps, into
    ``out/autoencoder.pt``; kept when resuming), and its teacher learns in that latent space; a twin started from
    it keeps the prior's encoder and latent statistics and trains only its decoder
    (``model.autoencoder.train_autoencoder(..., init_from=)``).

    Raises:
        InputError: a regression objective, licences that do not pair with the packs, packs that disagree on
            their settings, a model that does not fit them, or ``out`` already holding a prior (without ``force``).
    """
    if train_config.objective != "flow":
        raise InputError(f"a prior is a flow-matching teacher; objective {train_config.objective!r} is not "
                         "supported")
    licences = [UNKNOWN_LICENCE] * len(pack_paths) if not licences else licences
    if len(licences) != len(pack_paths):
        raise InputError(f"{len(licences)} --licence given for {len(pack_paths)} packs; give one per pack, in the "
                         "packs' order, or none (each is then recorded as 'unknown')")
    packs = [AvatarPack.load(path) for path in pack_paths]
    check_packs_agree(packs)
    for pack in packs:
        check_fits(model_config, pack)
    role = "teacher"
    prepare_run(out, role, force=force, resume=resume)
    device, generator = seeded_device(train_config.threads, train_config.seed, train_config.device)
    sampler = MultiPackSampler(packs, augmentation)
    network = TwinDenoiser(model_config)
    shared: dict[str, Any] | None = None
    if network.autoencoder is not None:
        if not (resume and (out / ROLE_FILES["autoencoder"]).is_file()):
            train_shared_autoencoder(packs, sampler, out, model_config, train_config, device, generator,
                                     half=half, progress=progress, on_step=on_step)
        shared = json.loads((out / AUTOENCODER_REPORT).read_text())
        network.autoencoder.load_state_dict(load_autoencoder(out, model_config).state_dict())
        network.autoencoder.requires_grad_(False)
    entries = [card_entry(pack, path, licence) for pack, path, licence in zip(packs, pack_paths, licences,
                                                                              strict=True)]
    info = {**pack_info(packs[0], pack_paths[0]), "prior": True, "packs": entries}
    outcome = fit(network, sampler, out, role, train_config, device=device, generator=generator, pack=info,
                  resume=resume, half=half, progress=progress, on_step=on_step)
    card = {
        "kind": CARD_KIND,
        "version": CARD_VERSION,
        **outcome.report(role, model_config, train_config, network),
        "batch_size": train_config.batch_size,
        "packs": entries,
        "licence_note": "each pack's licence as given by whoever trained this prior (--licence); 'unknown' means "
                        "none was given and the footage's terms must be checked before the prior is shared",
        "augmentation": asdict(augmentation),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "checkpoint": ROLE_FILES[role],
        "checkpoint_sha256": sha256_file(out / ROLE_FILES[role]),
    }
    if shared is not None:
        card["autoencoder"] = {**shared, "checkpoint": ROLE_FILES["autoencoder"],
                               "checkpoint_sha256": sha256_file(out / ROLE_FILES["autoencoder"])}
    atomic_write_bytes(out / CARD_FILE, json.dumps(card, indent=1).encode())
    return TrainResult(run=out, role=role, steps=train_config.steps, final_loss=outcome.final_loss,
                       seconds=outcome.seconds)


def train_shared_autoencoder(packs: list[AvatarPack], sampler: MultiPackSampler, out: Path,
                             model_config: ModelConfig, train_config: TrainConfig, device: torch.device,
                             generator: torch.Generator, *, half: bool = False, progress: bool = True,
                             on_step: StepObserver | None = None) -> None:
    """The autoencoder a latent prior's people share: trained on ``sampler``'s augmented crops of every person,
    its latents standardised over up to ``STANDARDISE_FRAMES`` training crops spread over the people; writes
    ``out/autoencoder.pt`` and ``out/autoencoder-prior.json`` (steps, loss, seconds, each person's holdout
    PSNR)."""
    autoencoder = Autoencoder(model_config).to(device).train()
    losses, seconds = fit_autoencoder(autoencoder, lambda size, gen: sampler.draw(size, gen).target, model_config,
                                      train_config, device, generator, progress=progress, on_step=on_step)
    autoencoder.eval()
    per_person = max(1, STANDARDISE_FRAMES // len(packs))
    chosen = []
    for part in sampler.samplers:
        indices = part.indices[np.linspace(0, len(part.indices) - 1, min(per_person, len(part.indices)))
                               .round().astype(int)]
        chosen.append(part.crops[torch.from_numpy(indices)])
    standardise(autoencoder, torch.cat(chosen), device)
    holdout = {}
    for pack in packs:
        face, mouth = holdout_psnr(autoencoder, pack, device)
        holdout[pack.root.resolve().name] = {"face": round(face, 3), "mouth": round(mouth, 3)}
    steps = train_config.autoencoder_steps
    save_checkpoint(out / ROLE_FILES["autoencoder"], model=model_config, train=train_config,
                    state_dict=autoencoder.state_dict(), step=steps, pack={"prior": True}, role="autoencoder",
                    half=half)
    report = {"steps": steps, "seconds": round(seconds, 2), "final_loss": recent_loss(losses),
              "loss_every_10": [round(v, 5) for v in losses[::10]], "standardised_on_frames": int(
                  sum(part.shape[0] for part in chosen)), "holdout_psnr": holdout}
    atomic_write_bytes(out / AUTOENCODER_REPORT, json.dumps(report, indent=1).encode())


def card_entry(pack: AvatarPack, path: Path, licence: str) -> dict[str, Any]:
    """What the model card says about one pack: its name, frames, the source video and portrait it records."""
    source = pack.meta.source
    return {"name": path.resolve().name, "path": str(path), "frames": int(pack.train_indices().size),
            "frame_count": pack.meta.frame_count, "source": {"name": source.get("name"),
                                                             "sha256": source.get("sha256")},
            "portrait": source.get("portrait"), "licence": licence}


def distill_prior(prior: Path, config: DistillConfig, *, pack_paths: list[Path] | None = None,
                  force: bool = False, half: bool = False, progress: bool = True,
                  on_step: StepObserver | None = None) -> DistillResult:
    """Distil ``prior``'s teacher into a prior student (``prior/student.pt``) on the prior's packs (or
    ``pack_paths``, in the card's order, where they have moved) with the augmentation its teacher was trained
    with, and add a ``student`` entry to the card (steps, settings, loss, seconds, the checkpoint's SHA-256).

    Raises:
        NotFoundError: ``prior`` is not a prior, or one of its packs is gone (pass ``pack_paths``).
        InputError: a student exists already and ``force`` is false, ``pack_paths`` do not pair with the card's
            packs, or the packs do not fit the teacher.
    """
    card = read_card(prior)
    out = prior / ROLE_FILES["student"]
    if out.exists() and not force:
        raise InputError(f"prior {prior} already holds a student ({out.name}); pass --force to overwrite it")
    recorded = [Path(entry["path"]) for entry in card["packs"]]
    paths = pack_paths or recorded
    if len(paths) != len(recorded):
        raise InputError(f"{len(paths)} packs given for a prior of {len(recorded)}; give one per pack of its card, "
                         "in the card's order")
    for path in paths:
        if not (path / "avatar.json").is_file():
            raise NotFoundError(f"the prior's avatar pack {path} is not there; pass the packs (--pack, once per "
                                "pack in the card's order)")
    packs = [AvatarPack.load(path) for path in paths]
    teacher_checkpoint = load_checkpoint(prior, "teacher")
    for pack in packs:
        check_fits(teacher_checkpoint.model, pack)
    device, generator = seeded_device(config.threads, config.seed, config.device)
    distiller = Distiller.start(teacher_checkpoint.build().to(device), config)
    sampler = MultiPackSampler(packs, Augmentation(**card["augmentation"]))
    losses, seconds = run_distillation(distiller, sampler, config, device, generator, progress=progress,
                                       on_step=on_step)
    model_config = replace(teacher_checkpoint.model, sample_steps=config.sample_steps)
    save_checkpoint(out, model=model_config, train=teacher_checkpoint.train,
                    state_dict=distiller.result.eval().state_dict(), step=config.steps, pack=teacher_checkpoint.pack,
                    role="student", half=half,
                    extra={"distill": asdict(config), "teacher_step": teacher_checkpoint.step})
    final_loss = recent_loss(losses)
    card["student"] = {"checkpoint": ROLE_FILES["student"], "checkpoint_sha256": sha256_file(out),
                       "steps": config.steps, "final_loss": final_loss, "seconds": round(seconds, 2),
                       "device": str(device), "distill": asdict(config),
                       "loss_every_10": [round(v, 5) for v in losses[::10]],
                       "date": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_bytes(prior / CARD_FILE, json.dumps(card, indent=1).encode())
    return DistillResult(student=out, steps=config.steps, final_loss=final_loss, seconds=seconds)
