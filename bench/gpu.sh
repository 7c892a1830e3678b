#!/usr/bin/env bash
# The GPU check of twincast, for a machine with PyTorch + CUDA (TensorRT and onnxruntime-gpu optional).
# Installs nothing. Prints the device, a parity check of each fast engine path against fp32 with a frames/s
# table (bench.gpu), then the cost of one `base` training step (bench.train_step). Results also go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=. PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
export OUT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY -c "import torch, onnx, onnxruntime; print('torch', torch.__version__, 'onnx', onnx.__version__, 'ort', onnxruntime.__version__, onnxruntime.get_available_providers())"
$PY -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>/dev/null || echo "tensorrt: not installed"
$PY -m bench.train_step --preset base --batch 16,64 --steps 10 | tee "$OUT/train_step.jsonl"
$PY -m bench.gpu "$@" 2>&1 | tee "$OUT/gpu_bench.log"
