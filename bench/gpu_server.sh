#!/usr/bin/env bash
# The whole server on a GPU: how many `base` twins one card carries at 25 fps with >= 98 % of frames on time,
# compositing, encoding and WebRTC viewers included (bench.sessions --whole-server; see bench/whole_server.py).
#
#   here:  bash bench/fetch_gpu_wheels.sh      (PyAV + aiortc for Python 3.12 into .whl, which git ignores)
#   there: bash bench/gpu_server.sh           (with .whl copied beside it; about 6 minutes, at most ~8)
#
# Installs the carried PyAV/aiortc (.whl/site-py312.tar.xz, or .whl/*.whl) into /tmp/site, prints the device,
# builds a small synthetic pack as a check that PyAV writes H.264, then measures the server with max batch 16
# at 8, 24, 40 and 48 sessions (one viewer each, 720x1280 frames), and a second server with max batch 32 at 32
# sessions (where the batch-32 engine call was ~45 % slower inside the worker than alone; the stage timings say
# where). Each pass is time-bounded; results go to $OUT (JSON written after every row, so a cut-short pass still
# reports) and to stdout. Env: SESSIONS, VIEWERS, SECONDS_EACH, FRAME, BATCH, SECOND_PASS=0 to skip the second
# pass; PRESET=tiny DEVICE=cpu FRAME=512x512 PYTHON=.venv/bin/python try the script itself on a CPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d)}
export OUT PYTHONUNBUFFERED=1
SITE=/tmp/site
mkdir -p "$SITE"
if [ -f .whl/site-py312.tar.xz ]; then
  tar -C "$SITE" -xJf .whl/site-py312.tar.xz || exit 1
elif compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || exit 1
else
  echo "no .whl here: PyAV and aiortc must already be installed (run bash bench/fetch_gpu_wheels.sh and carry .whl)"
fi
export PYTHONPATH="$SITE:$ROOT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
$PY - <<'PY' || exit 1
import platform, torch, av, aiortc, onnxruntime
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-", "av", av.__version__, "aiortc",
      aiortc.__version__, "ort", onnxruntime.__version__, "libx264", "libx264" in av.codecs_available)
try:
    import mediapipe  # noqa: F401
    print("mediapipe: installed")
except ImportError:
    print("mediapipe: not installed (serve does not need it)")
PY
$PY -m bench.synthetic_pack /tmp/twb-check --crop-px 64 --seconds 1 --frame "${FRAME:-720x1280}" || exit 1
WORK=/tmp/twb-${PRESET:-base}  # the exported model and the pack, shared by both passes
timeout -k 20 330 $PY -m bench.sessions --whole-server --preset "${PRESET:-base}" --device "${DEVICE:-cuda}" --precision fp16 \
  --sessions "${SESSIONS:-8,24,40,48}" --viewers "${VIEWERS:-1}" --seconds "${SECONDS_EACH:-12}" --settle-s 4 \
  --max-batch "${BATCH:-16}" --frame "${FRAME:-720x1280}" --work "$WORK" 2>&1 | tee "$OUT/whole_server_b${BATCH:-16}.log"
echo "first pass exit status: ${PIPESTATUS[0]}"
if [ "${SECOND_PASS:-1}" = 1 ]; then
  timeout -k 20 150 $PY -m bench.sessions --whole-server --preset "${PRESET:-base}" --device "${DEVICE:-cuda}" \
    --precision fp16 --sessions 32 --viewers "${VIEWERS:-1}" --seconds "${SECONDS_EACH:-12}" --settle-s 4 --max-batch 32 \
    --frame "${FRAME:-720x1280}" --work "$WORK" 2>&1 | tee "$OUT/whole_server_b32.log"
  echo "second pass exit status: ${PIPESTATUS[0]}"
fi
ls -la "$OUT"
