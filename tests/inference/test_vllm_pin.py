"""One vLLM pin (requirements/vllm.txt): the contract lane installs it, and deploy/ must run it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PIN_FILE = ROOT / "requirements/vllm.txt"


def pinned_vllm_version() -> str:
    lines = [line.strip() for line in PIN_FILE.read_text().splitlines()]
    pins = [line for line in lines if line and not line.startswith("#")]
    assert len(pins) == 1 and pins[0].startswith("vllm=="), pins
    return pins[0].removeprefix("vllm==")


def deploy_vllm_versions() -> dict[str, set[str]]:
    """Every vLLM version deploy/ names, by file."""
    deploy = ROOT / "deploy"
    found = {
        "Dockerfile.gpu": re.findall(
            r"^ARG VLLM_VERSION=(\S+)$", (deploy / "Dockerfile.gpu").read_text(), re.M
        ),
        "compose.yaml": re.findall(r"VLLM_VERSION:-([^}]+)\}", (deploy / "compose.yaml").read_text()),
        ".env.example": re.findall(r"^VLLM_VERSION=(\S+)$", (deploy / ".env.example").read_text(), re.M),
    }
    for path in deploy.rglob("*"):
        text_file = path.suffix in (".yaml", ".yml", ".md", ".py") or path.name.startswith("Dockerfile")
        if path.is_file() and text_file:
            found.setdefault(path.name, [])
            found[path.name] += re.findall(r"vllm==([0-9][^\s\"'}]*)", path.read_text(errors="ignore"))
    return {name: set(versions) for name, versions in found.items() if versions}


def test_deploy_runs_the_pinned_vllm() -> None:
    pin = pinned_vllm_version()
    versions = deploy_vllm_versions()
    assert {"Dockerfile.gpu", "compose.yaml", ".env.example"} <= set(versions)
    assert {name: v for name, v in versions.items() if v != {pin}} == {}
