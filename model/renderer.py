"""The renderer: a denoiser and the few-step sampler unrolled into one module, (masked crop, reference, mel,
noise) → face crop. The exporter traces it into ONNX; the PyTorch engine runs it as it is."""

from __future__ import annotations

from torch import Tensor, nn

from model.flow import sample
from model.networks import TwinDenoiser


class TwinRenderer(nn.Module):
    """The sampler unrolled over a fixed number of steps: (masked crop, reference, mel, noise) → face crop.

    Images are (B, 3, crop, crop) float32 in [-1, 1]; mel is (B, 80, 16); noise has the model's
    ``noise_shape`` (the crop's, or the latents' for latent models, whose decoder ends the graph); the output
    is clamped to [-1, 1].
    """

    def __init__(self, denoiser: TwinDenoiser, steps: int) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.steps = steps

    def forward(self, masked_crop: Tensor, reference: Tensor, mel: Tensor, noise: Tensor) -> Tensor:
        condition = self.denoiser.condition(masked_crop, reference, mel)

        def denoise(x: Tensor, t: Tensor) -> Tensor:
            return self.denoiser.denoise(x, t, condition)

        return self.denoiser.finish(sample(denoise, noise, self.steps), condition).clamp(-1.0, 1.0)


class HalfRenderer(nn.Module):
    """The renderer in float16 with float32 inputs and output, so callers and sidecars stay the same."""

    def __init__(self, renderer: TwinRenderer) -> None:
        super().__init__()
        self.renderer = renderer.half()

    def forward(self, masked_crop: Tensor, reference: Tensor, mel: Tensor, noise: Tensor) -> Tensor:
        return self.renderer(masked_crop.half(), reference.half(), mel.half(), noise.half()).float()


def build_renderer(denoiser: TwinDenoiser, steps: int, precision: str) -> nn.Module:
    """The exportable renderer at ``precision`` (``fp32`` or ``fp16``)."""
    renderer = TwinRenderer(denoiser, steps).eval()
    return HalfRenderer(renderer).eval() if precision == "fp16" else renderer
