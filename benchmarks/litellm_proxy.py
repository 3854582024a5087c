"""The peer gateway for benchmarks/peer.py: LiteLLM proxy, pinned, in its own environment under .bench/."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITELLM_VERSION = "1.106.2"


def constraints(version: str) -> Path:
    """Every package of `version`'s environment, pinned (benchmarks/litellm-<version>.constraints.txt)."""
    return ROOT / "benchmarks" / f"litellm-{version}.constraints.txt"


def install_args(version: str) -> list[str]:
    """pip's arguments: the version, and its whole environment pinned where a file lists it."""
    pinned = constraints(version)
    if not pinned.exists():
        print(f"warning: no {pinned.name}: litellm's dependencies float with the index", file=sys.stderr)
        return ["install", "-q", f"litellm[proxy]=={version}"]
    return ["install", "-q", "-c", str(pinned), f"litellm[proxy]=={version}"]


def env_dir(version: str) -> Path:
    """.bench/litellm-<version>[-<pins' hash>]: an environment made from other pins is not reused."""
    pinned = constraints(version)
    tag = f"-{hashlib.sha256(pinned.read_bytes()).hexdigest()[:8]}" if pinned.exists() else ""
    return ROOT / ".bench" / f"litellm-{version}{tag}"


def litellm_bin(version: str, log: Path) -> Path:
    """The pinned LiteLLM proxy, installed into .bench/ when missing."""
    venv = env_dir(version)
    exe = venv / "bin" / "litellm"
    if usable(exe):
        return exe
    if venv.is_symlink():
        venv.unlink()
    elif venv.exists():  # moved since it was made: a venv's scripts name its old path
        shutil.rmtree(venv)
    print(f"installing litellm[proxy]=={version} into {venv} (once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with log.open("ab") as out:
        subprocess.run(
            [str(venv / "bin" / "pip"), *install_args(version)],
            check=True,
            stdout=out,
            stderr=out,
        )
    return exe


def usable(script: Path) -> bool:
    """The script exists and the interpreter its #! line names does too (a virtual environment
    copied or moved elsewhere keeps scripts that point at where it was made)."""
    try:
        first = script.read_bytes().split(b"\n", 1)[0]
    except OSError:
        return False
    return first.startswith(b"#!") and Path(first[2:].decode().split()[0]).exists()


def litellm_config(path: Path, upstream: str, *models: str) -> Path:
    """Each model routed to the upstream; LiteLLM's own telemetry off."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "model_list": [
                    {
                        "model_name": model,
                        "litellm_params": {
                            "model": f"openai/{model}",
                            "api_base": upstream,
                            "api_key": "none",
                        },
                    }
                    for model in models
                ],
                "litellm_settings": {"telemetry": False, "drop_params": True},
            }
        )
    )
    return path
