"""Runtime stage: one small ``Engine`` interface over ONNX Runtime and PyTorch (TensorRT to come)."""

from engines.base import Engine, EngineOptions, create_engine, engine_names

__all__ = ["Engine", "EngineOptions", "create_engine", "engine_names"]
