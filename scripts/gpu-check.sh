#!/usr/bin/env bash
# The GPU check in one line, on a GPU machine: bash scripts/gpu-check.sh [--load-s 60] [--out DIR]
# (benchmarks/gpu_check.py: the NVML series on /metrics against nvidia-smi under a PyTorch load;
# exit 2 with the reason on a machine without a GPU). Where the machine reaches no package index,
# put the wheels of what its Python lacks (pure-Python ones: pydantic-settings, opentelemetry-*,
# grpcio-health-checking, sentry-sdk, pybreaker, redis, ...) in .gpu-wheels/ beforehand:
#   pip download --no-deps -d .gpu-wheels <package>...
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
if [ -d .gpu-wheels ]; then
  "$py" -m pip install -q --no-index --find-links .gpu-wheels .gpu-wheels/*.whl
fi
exec "$py" benchmarks/gpu_check.py "$@"
