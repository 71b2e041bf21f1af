#!/usr/bin/env bash
# GPU check (under 8 minutes): CUDA vs CPU correctness on a tiny case, then throughput.
# Usage, from the repository root on a GPU machine with the project installed: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
timeout 480 "$PY" benchmarks/gpu_check.py "$@"
