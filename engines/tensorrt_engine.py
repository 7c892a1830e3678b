"""TensorRT engine: a cached plan, device buffers allocated once, ``execute_async_v3``, a CUDA graph per batch.

Device memory and streams come from PyTorch (present wherever CUDA is), so no separate CUDA binding is needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from engines.base import Engine, EngineInfo, EngineOptions
from engines.tensorrt_build import BatchProfile, build_plan, default_plan_dir, require_tensorrt
from export.spec import TwinSpec
from twincast.errors import ArtifactMismatchError

log = logging.getLogger(__name__)


class TensorRTEngine(Engine):
    """Runs a TensorRT plan built from the artifact (fp16 unless ``options.precision`` says fp32)."""

    name = "tensorrt"

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        super().__init__(onnx_path, spec, options)
        trt = require_tensorrt()
        import torch

        self._torch = torch
        profile = BatchProfile(1, max(1, min(8, options.max_batch)), options.max_batch)
        self.plan = build_plan(onnx_path, precision=options.precision, profile=profile,
                               cache_dir=options.cache_dir or default_plan_dir(spec, onnx_path))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan.plan.read_bytes())
        if self._engine is None:
            raise ArtifactMismatchError(f"TensorRT could not load plan {self.plan.plan}; rebuild it")
        self._context = self._engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        self._device = torch.device("cuda")
        # Buffers for the largest batch, allocated once; smaller batches use their leading rows.
        self._buffers: dict[str, Any] = {}
        for index in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(index)
            shape = tuple(options.max_batch if d == "batch" else int(d) for d in self._tensor_spec(name).shape)
            self._buffers[name] = torch.zeros(shape, dtype=torch.float32, device=self._device)
            self._context.set_tensor_address(name, self._buffers[name].data_ptr())
        self._output = spec.outputs[0].name
        self._graphs: dict[int, Any] = {}

    def _tensor_spec(self, name: str) -> Any:
        for tensor in (*self.spec.inputs, *self.spec.outputs):
            if tensor.name == name:
                return tensor
        raise ArtifactMismatchError(f"plan tensor {name!r} is not in the sidecar")

    def _set_batch(self, batch: int) -> None:
        for name in self.input_names:
            self._context.set_input_shape(name, self.input_shape(name, batch))

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        batch = next(iter(inputs.values())).shape[0]
        if batch > self.options.max_batch:
            raise ArtifactMismatchError(f"batch {batch} is over this plan's maximum {self.options.max_batch}")
        with torch.cuda.stream(self._stream):
            for name in self.input_names:
                self._buffers[name][:batch].copy_(torch.from_numpy(np.ascontiguousarray(inputs[name])),
                                                  non_blocking=True)
            if self.options.cuda_graphs:
                self._graph(batch).replay()
            else:
                self._set_batch(batch)
                self._enqueue()
            faces = self._buffers[self._output][:batch].cpu()
        self._stream.synchronize()
        return faces.numpy()

    def _graph(self, batch: int) -> Any:
        """Capture ``execute_async_v3`` for ``batch`` into a CUDA graph on first use."""
        torch = self._torch
        if batch not in self._graphs:
            self._set_batch(batch)
            self._enqueue()  # TensorRT finishes its shape-dependent setup outside the capture
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._enqueue()
            self._graphs[batch] = graph
        else:
            self._set_batch(batch)
        return self._graphs[batch]

    def memory_mb(self) -> float | None:
        return float(self._torch.cuda.max_memory_allocated()) / 2**20 + self._engine.device_memory_size / 2**20

    def describe(self) -> EngineInfo:
        return {**super().describe(), "plan": self.plan.plan.name, "plan_cached": self.plan.cached}

    def close(self) -> None:
        self._graphs.clear()
        self._context = None
        self._engine = None
