"""ONNX Runtime engine (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from engines.base import Engine, EngineOptions
from export.spec import TwinSpec
from twincast.errors import ArtifactMismatchError, DependencyError


class OnnxRuntimeEngine(Engine):
    """Runs ``twin.onnx`` with ONNX Runtime; its own thread pool has ``options.threads`` threads."""

    name = "onnxruntime"

    def __init__(self, onnx_path: Path, spec: TwinSpec, options: EngineOptions) -> None:
        super().__init__(onnx_path, spec, options)
        if options.device != "cpu":
            raise DependencyError("the onnxruntime engine here runs on CPU only; use --device cpu")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.thread_count
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        session_options.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spin else "0")
        self._session: Any = ort.InferenceSession(str(onnx_path), session_options,
                                                  providers=["CPUExecutionProvider"])
        graph_inputs = {node.name for node in self._session.get_inputs()}
        if graph_inputs != set(self.input_names):
            raise ArtifactMismatchError(
                f"{onnx_path.name} takes inputs {sorted(graph_inputs)} but its sidecar lists {sorted(self.input_names)}"
            )
        self._output = self.spec.outputs[0].name

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        (faces,) = self._session.run([self._output], {name: inputs[name] for name in self.input_names})
        return np.asarray(faces)

    def close(self) -> None:
        self._session = None
