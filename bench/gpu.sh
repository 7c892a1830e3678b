#!/usr/bin/env bash
# The GPU check of twincast's engines, for a machine with PyTorch + CUDA (TensorRT and onnxruntime-gpu optional).
# Installs nothing. Prints the device, a parity check of each fast path against fp32, and a frames/s table.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, onnx, onnxruntime; print('torch', torch.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"
python -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null || echo "tensorrt: not installed"
exec python -m bench.gpu "$@"
