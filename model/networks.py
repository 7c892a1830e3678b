"""The renderer's networks: an audio encoder over log-mel windows and a conditional UNet over patchified pixels.

The UNet predicts the clean crop (x-prediction, as JiT — Li & He 2025, "Back to Basics: Let Denoising
Generative Models Denoise" — recommends for high-dimensional patches) and composites it with the known upper
face, so only the region below ``mask_top`` is ever generated.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import ModelConfig


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


class TwinDenoiser(nn.Module):
    """x-prediction network: (x_t, t, masked crop, reference, mel, audio_keep) → clean crop estimate.

    All images are (B, 3, crop, crop) in [-1, 1]. The prediction is composited so rows above ``mask_top``
    are the masked crop's own pixels.
    """

    mask: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        patch = config.patch_px
        emb_dim = config.time_dim
        self.register_buffer("mask", lower_mask(config.crop_px, config.mask_top), persistent=False)
        self.audio = AudioEncoder(config.mel_bins, config.mel_frames, config.audio_dim)
        self.audio_proj = nn.Linear(config.audio_dim, emb_dim)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # The noisy crop and the conditions (masked crop, reference, mask) are embedded separately, so the
        # conditions are encoded once per frame however many sampler steps run.
        self.x_in = nn.Conv2d(3 * patch * patch, config.channels[0], 3, padding=1)
        self.cond_in = nn.Conv2d(7 * patch * patch, config.channels[0], 3, padding=1)
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
        self.conv_out = nn.Conv2d(current, 3 * patch * patch, 3, padding=1)

    def condition(self, masked: Tensor, reference: Tensor, mel: Tensor,
                  audio_keep: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Encode the per-frame conditions once: (spatial features, audio embedding, known upper pixels)."""
        mask = self.mask.expand(masked.shape[0], -1, -1, -1)
        known = masked * (1 - mask)
        features = self.cond_in(self._patchify(torch.cat([known, reference, mask], dim=1)))
        audio = self.audio_proj(self.audio(mel))
        if audio_keep is not None:
            audio = audio * audio_keep[:, None]
        return features, audio, known

    def denoise(self, x_t: Tensor, t: Tensor, condition: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """One x-prediction from a noisy crop and pre-encoded conditions."""
        features, audio, known = condition
        h = self.x_in(self._patchify(x_t)) + features
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim).to(x_t.dtype)) + audio
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
        predicted = F.pixel_shuffle(out, self.config.patch_px) if self.config.patch_px > 1 else out
        return self.mask * predicted + known

    def forward(self, x_t: Tensor, t: Tensor, masked: Tensor, reference: Tensor, mel: Tensor,
                audio_keep: Tensor | None = None) -> Tensor:
        return self.denoise(x_t, t, self.condition(masked, reference, mel, audio_keep))

    def _patchify(self, images: Tensor) -> Tensor:
        patch = self.config.patch_px
        return F.pixel_unshuffle(images, patch) if patch > 1 else images
