#!/usr/bin/env bash
# The GPU device check, from a clean checkout: install bneck with the [gpu] extra into its own venv,
# then print the check's JSON lines (bench/gpu_check.py) to stdout and to $OUT/gpu_check.jsonl.
#   bash bench/gpu_check.sh            # on a machine with an NVIDIA GPU (about 8 minutes in all)
#   bash bench/gpu_check.sh --quick    # the same steps at tiny sizes (a smoke test, also on a CPU)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BNECK_GPU_VENV:-.venv-gpu}
OUT=${OUT:-bench/out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
t0=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
extra=gpu
# Without a GPU driver the CUDA wheels are dead weight: the smoke test installs the plain extra.
command -v nvidia-smi >/dev/null 2>&1 || extra=plots
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
"$VENV/bin/python" -m pip install -q -e ".[$extra]"
echo "{\"step\": \"install\", \"extra\": \"$extra\", \"seconds\": $(( $(date +%s) - t0 ))}" | tee "$OUT/gpu_check.jsonl"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
"$VENV/bin/python" bench/gpu_check.py "$@" | tee -a "$OUT/gpu_check.jsonl"
