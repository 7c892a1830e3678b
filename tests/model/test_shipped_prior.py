"""The demo prior that ships in ``assets/prior/demo/``: complete, free to share, the default start of a demo twin,
and a network that has learnt faces (it denoises a face it never saw far better than fresh weights do).

How it was made and what it buys is ``bench/prior_study.py`` and BENCHMARKS.md; these tests guard the files.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from avatar.synth import load_portrait
from model.checkpoint import load_checkpoint
from model.config import preset
from model.flow import interpolate, velocity_loss
from model.networks import TwinDenoiser
from model.prior_card import (
    CARD_FILE,
    SHIPPED_DIR,
    UNKNOWN_LICENCE,
    choose_prior,
    initialise_from,
    read_card,
    shipped_prior,
)
from twincast.files import sha256_file

DEMO = SHIPPED_DIR / "demo"
ROOT = Path(__file__).resolve().parent.parent.parent
MAX_BYTES = 15 * 1024 * 1024


def test_the_demo_prior_ships_complete_and_free_to_share() -> None:
    assert shipped_prior("demo") == DEMO
    card = read_card(DEMO)
    assert card["preset"] == "demo" and card["role"] == "teacher" and card["steps"] >= 1000
    assert sha256_file(DEMO / card["checkpoint"]) == card["checkpoint_sha256"]
    assert sorted(path.name for path in DEMO.iterdir()) == sorted([CARD_FILE, card["checkpoint"]])
    assert sum(path.stat().st_size for path in DEMO.iterdir()) <= MAX_BYTES
    assert len(card["packs"]) >= 2
    for entry in card["packs"]:
        assert entry["licence"] and entry["licence"] != UNKNOWN_LICENCE, entry["name"]
        assert entry["frames"] > 0 and len(entry["source"]["sha256"]) == 64
    assert card["model"]["crop_px"] == preset("demo").model.crop_px


def test_a_demo_twin_starts_from_it_by_default_and_a_pack_of_another_crop_from_scratch() -> None:
    model = preset("demo").model
    assert choose_prior("demo", prior=None, from_scratch=False, model=model) == (
        DEMO, f"from the shipped demo prior ({DEMO})")
    assert choose_prior("demo", prior=None, from_scratch=True, model=model)[0] is None
    other, said = choose_prior("demo", prior=None, from_scratch=False, model=replace(model, crop_px=96))
    assert other is None
    assert said == ("from scratch: the shipped demo prior does not fit this model "
                    "(crop_px 128 (prior) vs 96 (this model))")
    # the mask line may differ: it does not shape the weights
    assert choose_prior("demo", prior=None, from_scratch=False, model=replace(model, mask_top=0.5))[0] == DEMO


def _face(path: Path, side: int) -> torch.Tensor:
    """A portrait's central square at ``side`` px, as a (1, 3, side, side) crop in [-1, 1]."""
    image = load_portrait(path)
    height, width = image.shape[:2]
    edge = min(width, height)
    top, left = (height - edge) // 2, (width - edge) // 2
    square = cv2.resize(image[top:top + edge, left:left + edge], (side, side), interpolation=cv2.INTER_CUBIC)
    pixels = square.astype(np.float32) / 127.5 - 1
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


def _flow_loss(network: TwinDenoiser, face: torch.Tensor, seed: int = 0) -> float:
    """The teacher's loss on copies of ``face`` (target and reference, silent audio) at fixed times and noise."""
    generator = torch.Generator().manual_seed(seed)
    target = face.expand(6, -1, -1, -1).contiguous()
    t = torch.linspace(0.2, 0.8, 6)
    noise = torch.randn(target.shape, generator=generator)
    mel = torch.zeros((6, network.config.mel_bins, network.config.mel_frames))
    with torch.no_grad():
        predicted = network(interpolate(target, noise, t), t, target, target, mel)
    return float(velocity_loss(predicted.float(), target, t, network.loss_mask))


@pytest.mark.parametrize("portrait", ["faces/luispedro.jpg", "faces/takeo.png"])
def test_the_prior_denoises_a_face_it_never_saw_far_better_than_fresh_weights(portrait: str) -> None:
    model = preset("demo").model
    face = _face(ROOT / "assets" / portrait, model.crop_px)
    torch.manual_seed(0)
    fresh = TwinDenoiser(model).eval()
    fresh_loss = _flow_loss(fresh, face)
    record = initialise_from(fresh, DEMO)
    assert record["preset"] == "demo" and record["card_sha256"] == sha256_file(DEMO / CARD_FILE)
    prior_loss = _flow_loss(fresh, face)
    checkpoint = load_checkpoint(DEMO)
    name, weights = next(iter(checkpoint.state_dict.items()))
    torch.testing.assert_close(fresh.state_dict()[name], weights.float())
    assert prior_loss < 0.25 * fresh_loss, (prior_loss, fresh_loss)
