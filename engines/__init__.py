"""Runtime stage: one small ``Engine`` interface over ONNX Runtime, PyTorch (CPU, or CUDA with fp16 and CUDA graphs)
and TensorRT (where it is installed); ``create_engine("auto", …)`` picks the fastest that runs here."""

from engines.base import Engine, EngineOptions, create_engine, engine_names

__all__ = ["Engine", "EngineOptions", "create_engine", "engine_names"]
