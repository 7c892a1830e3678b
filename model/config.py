"""Model and training configuration, with the named presets ``tiny``, ``demo`` and ``base``.

A checkpoint stores both sections, so export, engines and eval never ask for them again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from twincast.errors import InputError

OBJECTIVES = ("flow", "regression")
DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(name: str, where: str) -> None:
    """Refuse a device name other than ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        InputError: naming ``where`` the name came from.
    """
    if not DEVICE_NAME.match(name):
        raise InputError(f"{where} {name!r} must be auto, cpu, cuda or cuda:N")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the renderer: a UNet conditioned on masked crop, reference and audio.

    With ``latent_channels`` 0 the UNet denoises patchified pixels (``patch_px``² patches); otherwise it
    denoises the latents of a per-person autoencoder (``latent_channels`` × crop/patch_px², widths
    ``ae_channels``, one downsampling per width) whose decoder is part of the renderer. ``crop_px`` and
    ``mask_top`` come from the avatar pack at training time.
    """

    preset: str = "tiny"
    crop_px: int = 64
    mask_top: float = 0.55
    patch_px: int = 4
    channels: tuple[int, ...] = (32, 64)
    blocks_per_level: int = 1
    attention: bool = False
    audio_dim: int = 64
    time_dim: int = 64
    groups: int = 8
    mel_bins: int = 80
    mel_frames: int = 16
    sample_steps: int = 2
    latent_channels: int = 0
    ae_channels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 or c % self.groups for c in self.channels):
            raise InputError(f"model channels {self.channels} must be positive multiples of groups={self.groups}")
        levels = len(self.channels)
        unit = self.patch_px * 2 ** (levels - 1)
        if self.crop_px % unit:
            raise InputError(
                f"model crop_px {self.crop_px} must be a multiple of patch_px × 2^(levels-1) = {unit}"
            )
        if not 0.3 <= self.mask_top <= 0.8:
            raise InputError(f"model mask_top {self.mask_top} must be in 0.3..0.8")
        if self.sample_steps < 1:
            raise InputError(f"model sample_steps {self.sample_steps} must be ≥ 1")
        if self.latent_channels < 0:
            raise InputError(f"model latent_channels {self.latent_channels} must be ≥ 0 (0 = pixel space)")
        if self.latent_channels and 2 ** len(self.ae_channels) != self.patch_px:
            raise InputError(f"model ae_channels {self.ae_channels} must have log2(patch_px = {self.patch_px}) "
                             "entries: the autoencoder downsamples once per width to the UNet's resolution")
        if any(c <= 0 or c % 8 for c in self.ae_channels):
            raise InputError(f"model ae_channels {self.ae_channels} must be positive multiples of 8")

    @property
    def latent(self) -> bool:
        """Whether the UNet works on autoencoder latents (rather than patchified pixels)."""
        return self.latent_channels > 0

    @property
    def latent_px(self) -> int:
        """Side of the UNet's top-level feature map (crop_px / patch_px)."""
        return self.crop_px // self.patch_px


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    objective: str = "flow"  # "flow": the diffusion teacher; "regression": the 1-step L1 baseline
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    audio_dropout: float = 0.1
    ema_decay: float = 0.0
    time_mean: float = -0.8  # logit-normal t sampling, skewed toward noise (JiT, Li & He 2025, sec. 4)
    time_std: float = 0.8
    checkpoint_every: int = 0
    autoencoder_steps: int = 2000  # `twincast train-ae`, for latent models
    autoencoder_learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 0  # 0 = all cores
    device: str = "auto"  # auto (CUDA when there is one), cpu, cuda or cuda:N

    def __post_init__(self) -> None:
        check_device_name(self.device, "train device")
        if self.objective not in OBJECTIVES:
            raise InputError(f"train objective {self.objective!r} must be one of {OBJECTIVES}")
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"train steps ({self.steps}) and batch_size ({self.batch_size}) must be ≥ 1")
        if not 0.0 < self.learning_rate < 1.0:
            raise InputError(f"train learning_rate {self.learning_rate} must be in (0, 1)")
        if not 0.0 <= self.audio_dropout < 1.0:
            raise InputError(f"train audio_dropout {self.audio_dropout} must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise InputError(f"train ema_decay {self.ema_decay} must be in [0, 1)")


@dataclass(frozen=True)
class Preset:
    """A named pair of model and training settings."""

    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)


PRESETS: dict[str, Preset] = {
    # Trains in seconds on a CPU; for tests.
    "tiny": Preset(ModelConfig(preset="tiny"), TrainConfig()),
    # `base`'s latent design at `tiny` width; for tests.
    "tiny-latent": Preset(ModelConfig(preset="tiny-latent", latent_channels=4, ae_channels=(8, 16)),
                          TrainConfig(autoencoder_steps=60)),
    # Small enough to render live on two CPU cores with ONNX Runtime.
    "demo": Preset(
        ModelConfig(preset="demo", crop_px=128, patch_px=8, channels=(64, 96, 128), blocks_per_level=1,
                    attention=True, audio_dim=128, time_dim=128, groups=16),
        TrainConfig(steps=6000, batch_size=16, learning_rate=1e-3, warmup_steps=200, ema_decay=0.999,
                    checkpoint_every=500),
    ),
    # For a GPU: 256² crops, a UNet of tens of millions of parameters over 8 × 32² autoencoder latents.
    "base": Preset(
        ModelConfig(preset="base", crop_px=256, patch_px=8, channels=(128, 256, 512, 512), blocks_per_level=2,
                    attention=True, audio_dim=256, time_dim=256, groups=32, latent_channels=8,
                    ae_channels=(32, 64, 128)),
        TrainConfig(steps=40000, batch_size=64, learning_rate=3e-4, warmup_steps=1000, ema_decay=0.9995,
                    checkpoint_every=2000, autoencoder_steps=6000),
    ),
}


def preset(name: str, *, crop_px: int | None = None, mask_top: float | None = None) -> Preset:
    """Look up a preset, adopting the pack's crop size and mask line when given.

    Raises:
        InputError: unknown preset name.
    """
    if name not in PRESETS:
        raise InputError(f"unknown model config {name!r}; expected one of {sorted(PRESETS)}")
    chosen = PRESETS[name]
    model = chosen.model
    if crop_px is not None:
        model = replace(model, crop_px=crop_px)
    if mask_top is not None:
        model = replace(model, mask_top=mask_top)
    return Preset(model=model, train=chosen.train)
