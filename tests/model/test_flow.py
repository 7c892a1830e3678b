import pytest
import torch

from model.config import ModelConfig
from model.flow import interpolate, sample, velocity_loss
from model.networks import TwinDenoiser, lower_mask


def test_sampler_lands_on_the_prediction_for_any_step_count() -> None:
    target = torch.randn(2, 3, 8, 8)
    for steps in (1, 2, 4, 25):
        calls: list[float] = []

        def oracle(x: torch.Tensor, t: torch.Tensor, calls: list[float] = calls) -> torch.Tensor:
            calls.append(float(t[0]))
            return target

        out = sample(oracle, torch.randn(2, 3, 8, 8), steps)
        torch.testing.assert_close(out, target)
        assert calls == pytest.approx([k / steps for k in range(steps)])


def test_interpolation_endpoints_and_loss() -> None:
    clean, noise = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    torch.testing.assert_close(interpolate(clean, noise, torch.tensor([1.0])), clean)
    torch.testing.assert_close(interpolate(clean, noise, torch.tensor([0.0])), noise)
    weight = torch.ones(1, 1, 4, 4)
    assert velocity_loss(clean, clean, torch.tensor([0.3]), weight) == 0
    # Half the error at t = 0.5 costs the same as the full error at t = 0 (velocity space).
    half = velocity_loss(clean * 0.5, clean, torch.tensor([0.5]), weight)
    full = velocity_loss(clean * 0.0, clean, torch.tensor([0.0]), weight)
    torch.testing.assert_close(half, full)


def test_denoiser_keeps_the_known_upper_face_exactly() -> None:
    config = ModelConfig(crop_px=32, patch_px=4, channels=(16, 32))
    network = TwinDenoiser(config).eval()
    masked = torch.rand(2, 3, 32, 32) * 2 - 1
    out = network(torch.randn(2, 3, 32, 32), torch.rand(2), masked, masked, torch.randn(2, 80, 16))
    upper = lower_mask(32, config.mask_top)[0, 0, :, 0] == 0
    torch.testing.assert_close(out[:, :, upper], masked[:, :, upper])
    assert not torch.allclose(out[:, :, ~upper], masked[:, :, ~upper])
