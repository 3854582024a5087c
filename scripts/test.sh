#!/usr/bin/env bash
# Sets up a fresh Debian machine (as root) and runs every check CI runs: generated-stub drift,
# lint, mypy --strict, and the test suite (unit, real gRPC over loopback, real processes,
# real redis-server and prometheus/promtool). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONDONTWRITEBYTECODE=1
export PATH="$PWD/.venv/bin:$PATH"  # tools the setup put in the venv (kubectl where none was installed)
echo "== generated stubs"; .venv/bin/python tools/gen_protos.py --check
echo "== ruff";  .venv/bin/ruff check platform tests benchmarks tools dashboards deploy
echo "== mypy";  .venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
