#!/usr/bin/env bash
# GPU smoke benchmark (a few minutes at most): ltcompress's distillation loop against a bare PyTorch loop,
# resnet50 -> mobilenetv3_small_100 at 224 px on synthetic data. Runs from the source tree: no pip install,
# no network. Usage: bash bench/gpu_smoke.sh [--steps 300] [--batch 64] [--size 224]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
exec "${PYTHON:-python3}" bench/gpu_smoke.py "$@"
