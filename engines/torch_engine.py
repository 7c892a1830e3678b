"""PyTorch engine: the reference (eager fp32 on CPU), and on CUDA fp16 with one CUDA graph per batch size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.base import Engine, EngineInfo, EngineOptions
from export.spec import TwinSpec
from model.checkpoint import load_checkpoint
from model.renderer import build_renderer
from twincast.errors import DependencyError

GRAPH_WARMUP_RUNS = 3


@dataclass
class _Graph:
    """One batch size's CUDA graph: its static device buffers, pinned host buffers of the same shapes, and the
    event a call waits on."""

    graph: torch.cuda.CUDAGraph
    inputs: list[torch.Tensor]
    output: torch.Tensor
    host_inputs: list[torch.Tensor]
    host_output: torch.Tensor
    done: torch.cuda.Event


class TorchEngine(Engine):
    """Runs the exported run's weights with PyTorch.

    ``options.precision`` sets the compute dtype; on CUDA with ``options.cuda_graphs`` each batch size is
    captured once into a CUDA graph with static input and output buffers, then replayed (no per-call kernel
    launch overhead). Its inputs and output pass through pinned (page-locked) host buffers of that batch size: the
    copies to and from the GPU are asynchronous DMA, and the call waits for them on a CUDA event, which lets go of
    the interpreter lock while it waits. (A pageable ``.cpu()`` copy stages through a bounce buffer; whether it
    is what made a batch-32 call about 45 % slower inside the live server's render worker than alone is for the
    next GPU run to show: ``bench.sessions --whole-server`` reports the worker's stage timings.)
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
        self._graphs: dict[int, _Graph] = {}

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        batch = next(iter(inputs.values())).shape[0]
        if self._device.type == "cuda" and self.options.cuda_graphs:
            captured = self._graph(batch)
            for host, device, name in zip(captured.host_inputs, captured.inputs, self.input_names, strict=True):
                host.numpy()[...] = inputs[name]
                device.copy_(host, non_blocking=True)
            captured.graph.replay()
            captured.host_output.copy_(captured.output, non_blocking=True)
            captured.done.record()
            captured.done.synchronize()  # waits without the interpreter lock
            return captured.host_output.numpy().copy()  # the pinned buffer is the next call's
        with torch.inference_mode():
            tensors = [torch.from_numpy(np.ascontiguousarray(inputs[name])).to(self._device)
                       for name in self.input_names]
            return self._renderer(*tensors).cpu().numpy()

    def _graph(self, batch: int) -> _Graph:
        """The CUDA graph of ``batch`` (captured on first use, after a few eager runs on a side stream), with its
        pinned host buffers."""
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
            pinned = [torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True) for tensor in static_inputs]
            self._graphs[batch] = _Graph(
                graph, static_inputs, static_output, host_inputs=pinned,
                host_output=torch.empty(static_output.shape, dtype=static_output.dtype, pin_memory=True),
                done=torch.cuda.Event())
        return self._graphs[batch]

    def memory_mb(self) -> float | None:
        if self._device.type != "cuda":
            return None
        return float(torch.cuda.max_memory_allocated(self._device)) / 2**20

    def describe(self) -> EngineInfo:
        return {**super().describe(), "cuda_graphs": self._device.type == "cuda" and self.options.cuda_graphs}

    def close(self) -> None:
        self._graphs.clear()
