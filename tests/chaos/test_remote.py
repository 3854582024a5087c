"""`aftershock drill --edge URL --toxiproxy URL` against a stack started in another process (as
staging is): a drill it can run gets a verdict, on the stack's own model with --model; a drill
needing settings or process faults it cannot apply there refuses with a clear reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.ctk import load_journal
from tests.conftest import ARTIFACTS, TESTS

pytestmark = pytest.mark.e2e

ROOT = TESTS.parent
CHAOS = ROOT / "chaos"


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # A stack that does not serve the sim models the drills name.
    models = tmp_path_factory.mktemp("remote") / "models.yaml"
    models.write_text("models:\n  - {name: staging-model, ttft_s: 0.02, itl_s: 0.01}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.chaos.remote_stack", str(models)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()
        assert line, "the remote stack did not start"
        yield json.loads(line)
    finally:
        proc.stdin.close()
        proc.wait(30)


def _drill(remote: dict[str, str], name: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "aftershock",
            "drill",
            str(CHAOS / f"{name}.yaml"),
            "--edge",
            remote["edge"],
            "--toxiproxy",
            remote["toxiproxy"],
            "--backend-metrics",
            remote["backend_metrics"],
            "--time-scale",
            "0.5",
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_a_drill_runs_against_a_stack_started_elsewhere(remote: dict[str, str]) -> None:
    out = ARTIFACTS / "drills-remote"
    result = _drill(remote, "latency-edge-backend", out, "--model", "staging-model")
    report = out / "latency-edge-backend"
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    data = json.loads((report / "report.json").read_text())
    assert data["target"]["stack"] == "given" and data["target"]["edge"] == remote["edge"]
    assert data["drill"]["load"]["model"] == "staging-model"
    assert data["summary"]["fault_requests"] > 0
    journal = load_journal(report / "journal.json")
    assert journal["status"] == "completed" and not journal["deviated"]
    assert journal["run"][0]["activity"]["provider"]["arguments"]["toxiproxy_url"] == remote["toxiproxy"]


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        (
            "reset-peer-backend-inference",
            "needs backend settings it cannot apply to a stack started elsewhere",
        ),
        ("replica-crash", "needs process faults (kill_replica)"),
    ],
)
def test_a_drill_needing_what_it_cannot_apply_refuses(remote: dict[str, str], name: str, reason: str) -> None:
    out = ARTIFACTS / "drills-remote-refused"
    result = _drill(remote, name, out)
    assert result.returncode == 2
    assert f"{name} refused against --edge: {reason}" in result.stderr
    assert not (out / name).exists(), "a refused drill sends no load and applies no fault"
