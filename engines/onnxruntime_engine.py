"""ONNX Runtime engine: the CPU execution provider, or CUDA (and TensorRT) providers where installed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engines.base import Engine, EngineInfo, EngineOptions
from export.spec import TwinSpec
from twincast.errors import ArtifactMismatchError, DependencyError

_state = ort.capi.onnxruntime_pybind11_state
# ONNX Runtime's load failures (they derive from Exception directly, not from RuntimeError).
LOAD_ERRORS = (_state.InvalidProtobuf, _state.InvalidGraph, _state.Fail, _state.NoSuchFile,
               _state.InvalidArgument, _state.NotImplemented, _state.RuntimeException)


class OnnxRuntimeEngine(Engine):
    """Runs ``twin.onnx`` with ONNX Runtime.

    On CPU its own thread pool has ``options.threads`` threads. On CUDA it uses the TensorRT provider when the
    build has it (falling back to plain CUDA kernels for what TensorRT cannot take) and binds the output on the
    device, copying only the finished faces back.
    """

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        super().__init__(onnx_path, spec, options)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.thread_count
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        self.providers = self._providers(options)
        try:
            self._session: Any = ort.InferenceSession(str(onnx_path), session_options, providers=self.providers)
        except LOAD_ERRORS as exc:
            raise ArtifactMismatchError(f"ONNX Runtime could not load {onnx_path.name}: {exc}") from exc
        graph_inputs = {node.name for node in self._session.get_inputs()}
        if graph_inputs != set(self.input_names):
            raise ArtifactMismatchError(
                f"{onnx_path.name} takes inputs {sorted(graph_inputs)} but its sidecar lists {sorted(self.input_names)}"
            )
        self._output = self.spec.outputs[0].name

    @staticmethod
    def _providers(options: EngineOptions) -> list[Any]:
        if options.device == "cpu":
            return ["CPUExecutionProvider"]
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DependencyError("this ONNX Runtime has no CUDA provider; install onnxruntime-gpu (the [gpu] extra)")
        providers: list[Any] = []
        if "TensorrtExecutionProvider" in available:
            providers.append(("TensorrtExecutionProvider", {"trt_fp16_enable": options.precision == "fp16",
                                                            "trt_engine_cache_enable": True}))
        return [*providers, "CUDAExecutionProvider", "CPUExecutionProvider"]

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        if self.options.device == "cpu":
            (faces,) = self._session.run([self._output], {name: inputs[name] for name in self.input_names})
            return np.asarray(faces)
        binding = self._session.io_binding()
        for name in self.input_names:
            binding.bind_cpu_input(name, np.ascontiguousarray(inputs[name]))
        binding.bind_output(self._output, "cuda")
        self._session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0])

    def describe(self) -> EngineInfo:
        # The graph's precision was fixed at export; options.precision does not apply to it.
        return {**super().describe(), "precision": self.spec.precision,
                "providers": [p if isinstance(p, str) else p[0] for p in self.providers]}

    def close(self) -> None:
        self._session = None
