#!/usr/bin/env bash
# Fetch, here, what `bash bench/gpu_server.sh` installs on a GPU machine that cannot reach a package index: PyAV
# and aiortc with aiortc's own needs, for CPython 3.12 on x86-64 Linux (the GPU image has torch, numpy, onnx,
# onnxruntime, aiohttp, OpenCV, Pillow, SciPy, tqdm and typing-extensions, but no av, aiortc, cryptography or
# cffi). Versions are pinned as constraints.txt pins them.
#
#   bash bench/fetch_gpu_wheels.sh [DEST]        (DEST defaults to .whl in the repository root)
#
# The wheels are 44 MB, and the repository's ~23 MB of tracked files plus whatever travels with them must stay
# under 64 MiB: with the plain wheels that is 63.9 MiB before any untracked file. So by default the wheels are
# installed here for Python 3.12 (pip --target with --platform/--python-version; nothing is compiled) and the
# result is packed with xz into DEST/site-py312.tar.xz (~31 MB); gpu_server.sh unpacks it into /tmp/site.
# KEEP_WHEELS=1 keeps the plain wheels in DEST instead (gpu_server.sh then pip-installs them).
#
# .whl/ is in .gitignore (never committed); copy it to the GPU machine beside the repository and run
# `bash bench/gpu_server.sh` there.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && ! "$PY" -m pip --version >/dev/null 2>&1; then PY=.venv/bin/python; fi
NAMES=(av aiortc aioice pylibsrtp pyee google-crc32c dnspython ifaddr pyopenssl cryptography cffi pycparser)
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64
           --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

pin() {  # NAME → NAME==VERSION from constraints.txt (names compared case-insensitively, - and _ alike)
  local want line
  want=$(echo "$1" | tr 'A-Z_' 'a-z-')
  line=$(tr 'A-Z_' 'a-z-' < constraints.txt | grep -E "^${want}==" | head -1 || true)
  if [ -n "$line" ]; then echo "$1==${line#*==}"; else echo "$1"; fi
}

SPECS=()
for name in "${NAMES[@]}"; do SPECS+=("$(pin "$name")"); done
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
echo "fetching: ${SPECS[*]}"
"$PY" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$SCRATCH/wheels" "${SPECS[@]}"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/site-py312.tar.xz
if [ "${KEEP_WHEELS:-0}" = 1 ]; then
  cp "$SCRATCH"/wheels/*.whl "$DEST"/
else
  "$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: "${PLATFORMS[@]}" \
    --target "$SCRATCH/site" "$SCRATCH"/wheels/*.whl
  echo "packing the installed files (xz, about a minute)"
  tar -C "$SCRATCH/site" -cJf "$DEST/site-py312.tar.xz" .
fi
(cd "$SCRATCH/wheels" && ls) > "$DEST/wheels.txt"
du -sh "$DEST"
echo "copy $DEST to the GPU machine's repository root and run bash bench/gpu_server.sh there"
