"""The renderer's networks: an audio encoder over log-mel windows, a conditional UNet over patchified pixels or
autoencoder latents, and the per-person autoencoder of latent models.

The UNet predicts the clean sample (x-prediction, as JiT — Li & He 2025, "Back to Basics: Let Denoising
Generative Models Denoise" — recommends for high-dimensional patches); the face crop is composited with the
known upper face (pixel models at every step, latent models once decoded), so only the region below
``mask_top`` is ever generated.
"""

from __future__ import annotations

import math
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig

# The spatial condition's image channels: the known upper face (3), the reference crop (3) and the mask (1).
CONDITION_IMAGE_CHANNELS = 3 + 3 + 1


class Condition(NamedTuple):
    """A frame's conditions, encoded once however many sampler steps run (``TwinDenoiser.condition``)."""

    features: Tensor  # (B, C0, H, W) the known upper face, reference and mask, embedded
    audio: Tensor  # (B, emb) the audio window's embedding (zeroed where audio is dropped)
    known: Tensor  # (B, 3, crop, crop) the masked crop's upper face, pixels, composited into the output


def lower_mask(crop_px: int, mask_top: float) -> Tensor:
    """(1, 1, crop, crop) float mask: 1 on rows at or below ``mask_top`` (the generated region), else 0."""
    rows = (torch.arange(crop_px, dtype=torch.float32) + 0.5) / crop_px
    return (rows >= mask_top).float().view(1, 1, crop_px, 1).expand(1, 1, crop_px, crop_px).contiguous()


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] (Vaswani et al. 2017, sec. 3.5), shape (B, dim)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = 1000.0 * t.float()[:, None] * frequencies[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def zero_init(conv: nn.Conv2d) -> nn.Conv2d:
    """Zero a residual branch's last layer so every block starts as the identity (Goyal et al. 2017)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class AudioEncoder(nn.Module):
    """Log-mel window (B, mel_bins, mel_frames) → audio embedding (B, audio_dim), keeping timing in the window."""

    def __init__(self, mel_bins: int, mel_frames: int, dim: int) -> None:
        super().__init__()
        width = max(64, dim)
        self.convs = nn.Sequential(
            nn.Conv1d(mel_bins, width, 3, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
            nn.Conv1d(width, width, 3, stride=2, padding=1), nn.GroupNorm(8, width), nn.SiLU(),
        )
        reduced = math.ceil(math.ceil(mel_frames / 2) / 2)
        self.head = nn.Linear(width * reduced, dim)

    def forward(self, mel: Tensor) -> Tensor:
        return self.head(self.convs(mel).flatten(1))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block with FiLM conditioning on the time+audio embedding."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class SelfAttention(nn.Module):
    """Multi-head self-attention over spatial positions, used only at the lowest resolution."""

    def __init__(self, channels: int, groups: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(batch, 3, self.heads, channels // self.heads, height * width).unbind(1)
        scale = (channels // self.heads) ** -0.5
        weights = torch.softmax((q.transpose(-1, -2) @ k) * scale, dim=-1)  # (B, heads, HW, HW)
        out = (weights @ v.transpose(-1, -2)).transpose(-1, -2).reshape(batch, channels, height, width)
        return x + self.proj(out)


class ConvBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block without conditioning (the autoencoder's)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        groups = 8
        self.body = nn.Sequential(
            nn.GroupNorm(groups, in_channels), nn.SiLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels), nn.SiLU(),
            zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class Autoencoder(nn.Module):
    """Face crop (B, 3, C, C) in [-1, 1] ⇄ standardised latents (B, latent_channels, C/patch, C/patch).

    One stride-2 downsampling per width in ``ae_channels`` (so 2^levels = patch_px). ``latent_mean`` and
    ``latent_std`` are set after training (``model.autoencoder.standardise``) and saved with the weights.
    """

    latent_mean: Tensor
    latent_std: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        widths = config.ae_channels
        size = config.crop_px // config.patch_px
        self.latent_shape = (config.latent_channels, size, size)
        encoder: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        current = widths[0]
        for width in widths:
            encoder += [ConvBlock(current, width), nn.Conv2d(width, width, 3, stride=2, padding=1)]
            current = width
        encoder += [ConvBlock(current, current), nn.GroupNorm(8, current), nn.SiLU(),
                    nn.Conv2d(current, config.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [nn.Conv2d(config.latent_channels, current, 3, padding=1),
                                    ConvBlock(current, current)]
        for width in reversed(widths):
            decoder += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(current, width, 3, padding=1),
                        ConvBlock(width, width)]
            current = width
        decoder += [nn.GroupNorm(8, current), nn.SiLU(), nn.Conv2d(current, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)
        self.register_buffer("latent_mean", torch.zeros(1, config.latent_channels, 1, 1))
        self.register_buffer("latent_std", torch.ones(1, config.latent_channels, 1, 1))

    def encode_raw(self, images: Tensor) -> Tensor:
        """Latents before standardisation."""
        return cast(Tensor, self.encoder(images))

    def decode_raw(self, latents: Tensor) -> Tensor:
        """Images from latents before standardisation."""
        return cast(Tensor, self.decoder(latents))

    def encode(self, images: Tensor) -> Tensor:
        """Standardised latents of ``images``."""
        return (self.encode_raw(images) - self.latent_mean) / self.latent_std

    def decode(self, latents: Tensor) -> Tensor:
        """Images (not clamped) from standardised latents."""
        return self.decode_raw(latents * self.latent_std + self.latent_mean)


class TwinDenoiser(nn.Module):
    """x-prediction network: (x_t, t, masked crop, reference, mel, audio_keep) → clean estimate of x.

    Images are (B, 3, crop, crop) in [-1, 1]. x lives in the model's *space*: the crop itself (pixel models),
    or the per-person autoencoder's standardised latents (latent models, ``config.latent``). ``finish`` turns
    the sampler's last x into the face crop, composited so rows above ``mask_top`` are the masked crop's own
    pixels (pixel models are composited at every step already).
    """

    mask: Tensor
    loss_mask: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        patch = config.patch_px
        emb_dim = config.time_dim
        self.register_buffer("mask", lower_mask(config.crop_px, config.mask_top), persistent=False)
        # Where the loss counts in the model's space: the generated rows, or every latent cell touching them.
        loss_mask = F.max_pool2d(self.mask, patch) if config.latent else self.mask
        self.register_buffer("loss_mask", loss_mask, persistent=False)
        self.autoencoder = Autoencoder(config) if config.latent else None
        x_channels = config.latent_channels if config.latent else 3 * patch * patch
        self.audio = AudioEncoder(config.mel_bins, config.mel_frames, config.audio_dim)
        self.audio_proj = nn.Linear(config.audio_dim, emb_dim)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # The noisy crop and the conditions (masked crop, reference, mask) are embedded separately, so the
        # conditions are encoded once per frame however many sampler steps run.
        self.x_in = nn.Conv2d(x_channels, config.channels[0], 3, padding=1)
        self.cond_in = nn.Conv2d(CONDITION_IMAGE_CHANNELS * patch * patch, config.channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = []
        current = config.channels[0]
        for level, channels in enumerate(config.channels):
            blocks = nn.ModuleList()
            for _ in range(config.blocks_per_level):
                blocks.append(ResBlock(current, channels, emb_dim, config.groups))
                current = channels
            self.down.append(blocks)
            skips.append(current)
            last = level == len(config.channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(current, current, 3, stride=2, padding=1))
        self.mid1 = ResBlock(current, current, emb_dim, config.groups)
        self.mid_attn = SelfAttention(current, config.groups) if config.attention else nn.Identity()
        self.mid2 = ResBlock(current, current, emb_dim, config.groups)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(config.channels))):
            channels = config.channels[level]
            blocks = nn.ModuleList([ResBlock(current + skips[level], channels, emb_dim, config.groups)])
            current = channels
            for _ in range(config.blocks_per_level - 1):
                blocks.append(ResBlock(current, channels, emb_dim, config.groups))
            self.up.append(blocks)
            self.upsample.append(nn.Identity() if level == 0 else nn.Sequential(
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(current, config.channels[level - 1], 3, padding=1),
            ))
            if level:
                current = config.channels[level - 1]
        self.norm_out = nn.GroupNorm(config.groups, current)
        self.conv_out = nn.Conv2d(current, x_channels, 3, padding=1)

    def condition(self, masked: Tensor, reference: Tensor, mel: Tensor,
                  audio_keep: Tensor | None = None) -> Condition:
        """Encode the per-frame conditions once (see ``Condition``)."""
        mask = self.mask.expand(masked.shape[0], -1, -1, -1)
        known = masked * (1 - mask)
        features = self.cond_in(self._patchify(torch.cat([known, reference, mask], dim=1)))
        audio = self.audio_proj(self.audio(mel))
        if audio_keep is not None:
            audio = audio * audio_keep[:, None]
        return Condition(features, audio, known)

    def denoise(self, x_t: Tensor, t: Tensor, condition: Condition) -> Tensor:
        """One x-prediction from a noisy crop and pre-encoded conditions."""
        h = self.x_in(x_t if self.autoencoder is not None else self._patchify(x_t)) + condition.features
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(x_t.dtype)) + condition.audio
        skips = []
        for blocks, downsample in zip(self.down, self.downsample, strict=True):
            for block in cast(nn.ModuleList, blocks):
                h = block(h, emb)
            skips.append(h)
            h = downsample(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for blocks, upsample in zip(self.up, self.upsample, strict=True):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in cast(nn.ModuleList, blocks):
                h = block(h, emb)
            h = upsample(h)
        out = self.conv_out(F.silu(self.norm_out(h)))
        if self.autoencoder is not None:
            return cast(Tensor, out)
        predicted = F.pixel_shuffle(out, self.config.patch_px) if self.config.patch_px > 1 else out
        return self.mask * predicted + condition.known

    def forward(self, x_t: Tensor, t: Tensor, masked: Tensor, reference: Tensor, mel: Tensor,
                audio_keep: Tensor | None = None) -> Tensor:
        return self.denoise(x_t, t, self.condition(masked, reference, mel, audio_keep))

    def to_space(self, images: Tensor) -> Tensor:
        """Crops (B, 3, C, C) → the model's space (themselves, or their standardised latents)."""
        return images if self.autoencoder is None else self.autoencoder.encode(images)

    def finish(self, x: Tensor, condition: Condition) -> Tensor:
        """The sampler's final x → the composited face crop (not clamped)."""
        if self.autoencoder is None:
            return x
        return self.mask * self.autoencoder.decode(x) + condition.known

    def noise_shape(self, batch: int) -> tuple[int, int, int, int]:
        """Shape of the sampler's starting noise for ``batch`` frames."""
        if self.autoencoder is None:
            return (batch, 3, self.config.crop_px, self.config.crop_px)
        return (batch, *self.autoencoder.latent_shape)

    def trainable(self) -> list[nn.Parameter]:
        """The parameters training updates: all but the frozen autoencoder's and any others frozen
        (``requires_grad`` off, ``model.train.freeze_modules``)."""
        frozen = {id(p) for p in self.autoencoder.parameters()} if self.autoencoder is not None else set()
        return [p for p in self.parameters() if id(p) not in frozen and p.requires_grad]

    def _patchify(self, images: Tensor) -> Tensor:
        patch = self.config.patch_px
        return F.pixel_unshuffle(images, patch) if patch > 1 else images
