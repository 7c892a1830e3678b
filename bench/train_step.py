"""Training-step cost of a preset: seconds per optimiser step and peak memory, on CUDA (bf16 autocast) or CPU.

    PYTHONPATH=. python -m bench.train_step --preset base --batch 16,32,64 [--steps 20]

Random batches of the preset's shapes (speed does not depend on the values); the same step as ``twincast
train``: flow-matching loss, backward, gradient clipping, AdamW. Imports nothing of the live stack.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from model.config import TrainConfig, preset
from model.data import Batch
from model.loop import mixed_precision, optimise, pick_device
from model.networks import TwinDenoiser
from model.train import flow_step


def measure(preset_name: str, batch_size: int, steps: int, device: torch.device) -> dict[str, object]:
    """Mean seconds per step over ``steps`` timed steps, after 3 warm-up steps."""
    chosen = preset(preset_name)
    config = chosen.model
    network = TwinDenoiser(config).to(device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    side = config.crop_px
    batch = Batch(target=torch.rand(batch_size, 3, side, side) * 2 - 1,
                  reference=torch.rand(batch_size, 3, side, side) * 2 - 1,
                  mel=torch.randn(batch_size, config.mel_bins, config.mel_frames))
    train = TrainConfig(batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def one() -> None:
        with mixed_precision(device):
            loss = flow_step(network, batch, train, generator, device)
        optimise(optimizer, loss, network.trainable())

    for _ in range(3):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    memory = round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None
    return {"preset": preset_name, "batch": batch_size, "s_per_step": round(seconds, 4),
            "samples_per_s": round(batch_size / seconds, 1), "peak_gib": memory,
            "parameters": sum(p.numel() for p in network.parameters()), "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch", default="16,64")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = pick_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    for size in (int(b) for b in args.batch.split(",")):
        print(json.dumps(measure(args.preset, size, args.steps, device)), flush=True)


if __name__ == "__main__":
    main()
