"""PyTorch engine: the reference (eager fp32 on CPU), and on CUDA fp16 with one CUDA graph per batch size."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from engines.base import Engine, EngineInfo, EngineOptions
from export.spec import TwinSpec
from model.checkpoint import load_checkpoint
from model.renderer import build_renderer
from twincast.errors import DependencyError

GRAPH_WARMUP_RUNS = 3


class TorchEngine(Engine):
    """Runs the exported run's weights with PyTorch.

    ``options.precision`` sets the compute dtype; on CUDA with ``options.cuda_graphs`` each batch size is
    captured once into a CUDA graph with static input and output buffers, then replayed (no per-call kernel
    launch overhead).
    """

    name = "torch"

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        super().__init__(onnx_path, spec, options)
        if options.device == "cuda" and not torch.cuda.is_available():
            raise DependencyError("the torch engine was asked for CUDA, but no CUDA device is available")
        self._device = torch.device(options.device)
        if options.device == "cpu":
            torch.set_num_threads(options.thread_count)
        checkpoint = load_checkpoint(onnx_path.parent / spec.weights_file)
        # float32 in and out at both precisions; fp16 casts inside (and so inside each captured graph)
        self._renderer = build_renderer(checkpoint.build(), spec.steps, options.precision).to(self._device)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        batch = next(iter(inputs.values())).shape[0]
        if self._device.type == "cuda" and self.options.cuda_graphs:
            graph, static_inputs, static_output = self._graph(batch)
            for buffer, name in zip(static_inputs, self.input_names, strict=True):
                buffer.copy_(torch.from_numpy(np.ascontiguousarray(inputs[name])), non_blocking=True)
            graph.replay()
            return static_output.cpu().numpy()
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device)
                       for name in self.input_names]
            return self._renderer(*tensors).cpu().numpy()

    def _graph(self, batch: int) -> tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]:
        """The CUDA graph of ``batch`` (captured on first use, after a few eager runs on a side stream)."""
        if batch not in self._graphs:
            static_inputs = [torch.zeros(self.input_shape(name, batch), device=self._device)
                             for name in self.input_names]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.inference_mode(), torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_RUNS):
                    self._renderer(*static_inputs)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph):
                static_output = self._renderer(*static_inputs)
            self._graphs[batch] = (graph, static_inputs, static_output)
        return self._graphs[batch]

    def memory_mb(self) -> float | None:
        if self._device.type != "cuda":
            return None
        return float(torch.cuda.max_memory_allocated(self._device)) / 2**20

    def describe(self) -> EngineInfo:
        return {**super().describe(), "cuda_graphs": self._device.type == "cuda" and self.options.cuda_graphs}

    def close(self) -> None:
        self._graphs.clear()
