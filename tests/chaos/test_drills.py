"""Every drill in chaos/, in a short version, against a local stack with the fault proxy on every
hop, and a drill too short to judge saying so (drills failing: test_controls.py). Drills run in
their own processes (Locust patches the standard library for gevent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.chaos.ctk import load_journal
from tests.conftest import ARTIFACTS, TESTS

pytestmark = pytest.mark.e2e

ROOT = TESTS.parent
DRILLS = sorted(p for p in (ROOT / "chaos").glob("*.yaml") if p.name != "models.yaml")
SCALE = "0.5"  # every time halved: each drill well under a minute


def _drill(path: Path, out: Path, *extra: str, scale: str = SCALE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "aftershock",
            "drill",
            str(path),
            "--time-scale",
            scale,
            "--out",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )


def test_there_is_a_drill_per_hop_and_fault_class() -> None:
    faults = [json.dumps(yaml.safe_load(p.read_text())["faults"]) for p in DRILLS]
    joined = " ".join(faults)
    for toxic in ("latency", "bandwidth", "timeout", "reset_peer", "slicer"):
        assert f'"type": "{toxic}"' in joined, toxic
    for kind in ("proxy_down", "kill_replica", "stop_redis", "model_server"):
        assert kind in joined, kind
    for proxy in ("edge_backend", "backend_inference_0", "backend_redis"):
        assert proxy in joined, proxy


@pytest.mark.parametrize("path", DRILLS, ids=[p.stem for p in DRILLS])
def test_drill_holds(path: Path) -> None:
    out = ARTIFACTS / "drills"
    result = _drill(path, out)
    report = out / path.stem / "report.md"
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{report.read_text() if report.exists() else ''}"
    data = json.loads((out / path.stem / "report.json").read_text())
    assert data["passed"] is True
    assert data["summary"]["fault_requests"] > 0, "the load must overlap the fault"
    assert (out / path.stem / "latency.png").stat().st_size > 10_000
    checks = {c["name"]: c["outcome"] for c in data["checks"]}
    assert checks["trace ids found in exported traces"] == "pass"
    journal = load_journal(out / path.stem / "journal.json")
    assert journal["status"] == "completed" and journal["deviated"] is False
    assert len(journal["run"]) == len(journal["rollbacks"]) == len(data["drill"]["faults"])


def test_reset_peer_report_reads_as_a_person_needs() -> None:
    out = ARTIFACTS / "drills-report"
    path = ROOT / "chaos" / "reset-peer-backend-inference.yaml"
    result = _drill(path, out)
    report_path = out / path.stem / "report.md"
    report = report_path.read_text() if report_path.exists() else ""
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{report}"
    data = json.loads((out / path.stem / "report.json").read_text())
    # The fault window, the breaker opening, the error rate within the hypothesis, trace ids.
    assert "| rst-inference-0 |" in report and "reset_peer" in report
    assert "| breaker inference:inference-0 opened | PASS | open from" in report
    assert "| error rate during the fault | PASS |" in report
    assert "![latency.png](latency.png)" in report and "![breakers.png](breakers.png)" in report
    assert any(
        row["inference:inference-0"] == 1 for row in data["breakers"] if "inference:inference-0" in row
    )
    traced = data["retried_trace_ids"] + data["failed_trace_ids"]
    assert traced and all(len(t) == 32 for t in traced)
    assert "Retried requests: `" in report


def test_a_drill_too_short_to_judge_exits_3_without_a_verdict() -> None:
    out = ARTIFACTS / "drills-short"
    path = ROOT / "chaos" / "down-backend-inference.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "aftershock", "drill", str(path), "--time-scale", "0.2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 3, result.stdout[-2000:]
    assert "TOO SHORT" in result.stdout
    report = (out / path.stem / "report.md").read_text()
    assert report.startswith("# One inference replica unreachable (proxy down): TOO SHORT TO JUDGE")
    assert "too short to judge: 2.0s of load after the last rollback, needs 1.0s to recover" in report
    assert json.loads((out / path.stem / "report.json").read_text())["summary"]["requests"] == 0
    assert load_journal(out / path.stem / "journal.json")["status"] == "failed"
