"""PyTorch engine: the reference implementation, eager fp32 on CPU (CUDA when asked)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from engines.base import Engine, EngineOptions
from export.onnx_export import TwinRenderer
from export.spec import TwinSpec
from model.checkpoint import load_checkpoint
from twincast.errors import DependencyError


class TorchEngine(Engine):
    """Runs the exported run's weights with PyTorch; ``options.threads`` sets torch's CPU threads."""

    name = "torch"

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        super().__init__(onnx_path, spec, options)
        if options.device == "cuda" and not torch.cuda.is_available():
            raise DependencyError("the torch engine was asked for CUDA, but no CUDA device is available")
        self._device = torch.device(options.device)
        if options.device == "cpu":
            torch.set_num_threads(options.thread_count)
        checkpoint = load_checkpoint(onnx_path.parent / spec.weights_file)
        self._renderer = TwinRenderer(checkpoint.build(), spec.steps).to(self._device).eval()

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device)
                       for name in self.input_names]
            return self._renderer(*tensors).float().cpu().numpy()
