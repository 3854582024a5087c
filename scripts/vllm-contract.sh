#!/usr/bin/env bash
# The contract lane: the vllm engine checked against the real vllm package, at the version deploy/
# runs (requirements/vllm.txt). CI runs it before scripts/test.sh (.ci/run); the default test command
# leaves it out because the environment is large (vLLM with its CUDA PyTorch, about 9 GB; the first
# run installs it, about 8 minutes, later runs reuse it). Extra arguments go to pytest.
#
# The environment lives outside the worktree, keyed by the pin: $AFTERSHOCK_VLLM_VENV, else
# ~/.cache/aftershock/vllm-<version>. vLLM is installed first, with its own pins; the lane's few
# other needs (requirements/vllm-contract.txt) are then installed constrained to what is already
# there, so nothing of vLLM's moves, and aftershock itself is imported from platform/ (PYTHONPATH).
set -euo pipefail
cd "$(dirname "$0")/.."
pin=$(grep -E '^vllm==' requirements/vllm.txt)
version=${pin#vllm==}
venv=${AFTERSHOCK_VLLM_VENV:-$HOME/.cache/aftershock/vllm-$version}
py=$venv/bin/python

if ! "$py" -c "import sys, importlib.metadata as m; sys.exit(m.version('vllm') != '$version')" 2>/dev/null; then
  echo "vllm-contract: installing $pin into $venv (once per pin)"
  python3 -m venv "$venv"
  "$py" -m pip install -q --upgrade pip
  "$py" -m pip install -q "$pin"
fi

stamp=$venv/.aftershock-contract
want=$(cat requirements/vllm.txt requirements/vllm-contract.txt requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "vllm-contract: installing the lane's test dependencies (vLLM's pins held)"
  "$py" -m pip freeze --exclude-editable | grep -v '^-e ' > "$venv/held.txt"
  # The project's own constraints, for packages vLLM did not already bring.
  "$py" - "$venv/held.txt" requirements/constraints.txt > "$venv/extra-constraints.txt" <<'PY'
import re, sys
name = lambda line: re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")
held = {name(l) for l in open(sys.argv[1]) if l.strip() and not l.startswith("#")}
for line in open(sys.argv[2]):
    if line.strip() and not line.startswith("#") and name(line) not in held:
        print(line.strip())
PY
  "$py" -m pip install -q -c "$venv/held.txt" -c "$venv/extra-constraints.txt" -r requirements/vllm-contract.txt
  echo "$want" > "$stamp"
fi

echo "== vllm contract lane ($("$py" -c 'import vllm; print("vllm", vllm.__version__)'))"
export PYTHONDONTWRITEBYTECODE=1
# The contract tests, and the engine's own tests, whose double is now made of vLLM's real types.
PYTHONPATH="$PWD/platform:$PWD" exec "$py" -m pytest -p no:cacheprovider -q \
  tests/inference/test_vllm_contract.py tests/inference/test_vllm_engine.py tests/inference/test_vllm_errors.py \
  tests/inference/test_vllm_pin.py tests/inference/test_servicer_vllm.py tests/inference/test_replica_lifecycle.py \
  -o addopts="-ra --strict-markers" "$@"
