"""Compile stage: a checkpoint becomes ``twin.onnx`` plus its ``twin.json`` sidecar (and, later, TensorRT plans)."""
