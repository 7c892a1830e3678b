"""What one rendered frame is made from, named once: the renderer's inputs, in graph order.

Torch-free, so the exporter, the engines and the live server (which never import torch) share the names.
"""

from __future__ import annotations

from typing import Generic, NamedTuple, TypeVar

Array = TypeVar("Array")


class RenderInputs(NamedTuple, Generic[Array]):
    """A frame's (or a batch's) renderer inputs; the field order is the ONNX graph's input order.

    Images are (B, 3, crop, crop) in [-1, 1]; ``mel`` is (B, mel bins, mel frames); ``noise`` has the model's
    noise shape (the crop's, or the latents' for latent models).
    """

    masked_crop: Array  # the base frame's aligned crop with the lower face zeroed
    reference: Array  # a crop of the same person with another mouth (identity, teeth)
    mel: Array  # the log-mel window around the frame
    noise: Array  # the sampler's starting noise


INPUT_NAMES: tuple[str, ...] = RenderInputs._fields
OUTPUT_NAMES: tuple[str, ...] = ("face",)
