"""benchmarks/cpu_ab.py run the way a user runs it, small (it broke once, unnoticed, when the OTLP
receiver moved to its own module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e


def test_one_tree_one_round_prints_every_scenario() -> None:
    platform = ROOT / "platform"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "cpu_ab.py"),
        f"--tree=this={platform}",
        "--rounds=1",
        "--requests=64",
        "--streams=64",
        "--scenarios=nonstream,stream,paced",
    ]
    env = {**os.environ, "PYTHONPATH": str(platform)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for key in (
        "nonstream.cpu_ms_per_req.edge+backend",
        "stream.cpu_us_per_token.edge+backend",
        "paced.cpu_us_per_token.edge+backend",
        "paced.tokens_per_message",
    ):
        assert key in rows, proc.stdout
    assert rows["paced.errors"].split()[2] == "0.000", rows["paced.errors"]


def test_an_unknown_scenario_is_refused() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "cpu_ab.py"), "--tree=x=/nowhere", "--scenarios=fast"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "--scenarios" in proc.stderr
