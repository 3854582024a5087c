"""benchmarks/deltas.py: its arithmetic, its verdicts, and a short run the way a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import deltas  # noqa: E402
from load import Result, Run  # noqa: E402


def _run(n: int, tokens: int, failed: int = 0, messages: int = 1) -> Run:
    ok = [Result(0.01, 0.01, tokens, messages, True) for _ in range(n - failed)]
    return Run(ok + [Result(0.01, 0.01, 0, 0, False, "UNAVAILABLE") for _ in range(failed)])


def test_idle_time_off_turn_is_taken_out_and_failures_still_divide() -> None:
    # 1.2 s spent over the window, idle at 0.1 s/s during 2 s of other stacks' turns: 1.0 s busy.
    spent = {"edge": 1.2, "backend": 0.5, "inference": 0.5}
    idle = {"edge": 0.1, "backend": 0.0, "inference": 0.0}
    f = deltas.figures_of("nonstream", _run(1000, 16, failed=10), spent, idle, off_turn_s=2.0)
    assert f["nonstream.cpu_ms_per_req.edge"] == pytest.approx(1.0)  # 1.0 s / 1000 requests sent
    assert f["nonstream.cpu_ms_per_req.all"] == pytest.approx(2.0)
    assert f["nonstream.errors"] == 10
    s = deltas.figures_of(
        "stream",
        _run(10, 64, messages=5),
        {"edge": 0.0064, "backend": 0, "inference": 0, "redis": 0.00064},
        {"edge": 0, "backend": 0, "inference": 0, "redis": 0},
        0.0,
    )
    assert s["stream.cpu_us_per_token.edge"] == pytest.approx(10.0)
    assert s["stream.cpu_us_per_token.edge+backend+redis"] == pytest.approx(11.0)
    assert s["stream.messages_per_request"] == 5  # SSE events per stream, beside the per-token figures


def _window(on: float, off: float, dedupe: float) -> dict[str, deltas.Figures]:
    def figures(v: float) -> deltas.Figures:
        return {
            "nonstream.cpu_ms_per_req.all": v,
            "stream.cpu_us_per_token.edge+backend+redis": v * 30,
            "nonstream.errors": 0.0,
        }

    return {"telemetry-on": figures(on), "telemetry-off": figures(off), "dedupe-on": figures(dedupe)}


def test_deltas_are_paired_per_window_and_judged_against_the_targets() -> None:
    # Window 2 is slower for every stack; paired differences do not see it.
    windows = [_window(2.5, 2.0, 2.9), _window(3.5, 3.0, 3.9), _window(2.6, 2.0, 3.0)]
    assert deltas.differences(windows)["telemetry-on"]["nonstream.cpu_ms_per_req.all"] == pytest.approx(
        [0.5, 0.5, 0.6]
    )
    lines: list[str] = []
    assert deltas.report(windows, lines.append)
    verdicts = [line for line in lines if line.endswith(("met", "missed"))]
    assert verdicts[0].endswith("0.500 (target <= 0.8) met")
    assert verdicts[1].endswith("0.900 (target <= 1.0) met")
    assert verdicts[2].endswith("27.000 (target <= 30.0) met")
    # The negative control: the same figures over their targets are missed.
    lines.clear()
    deltas.report([_window(3.0, 2.0, 3.2)], lines.append)
    assert [line.rsplit(" ", 1)[1] for line in lines if line.endswith(("met", "missed"))] == ["missed"] * 3


def test_a_configurations_figures_are_the_mean_of_its_replica_stacks() -> None:
    def figures(per_request: float, per_token: float) -> deltas.Figures:
        key, token_key = deltas.SPREAD_KEYS
        return {key: per_request, token_key: per_token}

    per_stack = {
        "telemetry-on#1": figures(2.4, 90.0),
        "telemetry-on#2": figures(2.6, 96.0),
        "telemetry-off#1": figures(1.8, 80.0),
    }
    merged = deltas.by_config(per_stack)
    assert merged["telemetry-on"]["nonstream.cpu_ms_per_req.all"] == pytest.approx(2.5)
    assert merged["telemetry-on"]["stream.cpu_us_per_token.edge+backend+redis"] == pytest.approx(93.0)
    assert merged["telemetry-off"]["nonstream.cpu_ms_per_req.all"] == pytest.approx(1.8)
    lines: list[str] = []
    deltas.replica_spread([per_stack, per_stack], lines.append)
    # Each replica's own figures are printed, so their spread can be read beside the deltas.
    (second,) = [line for line in lines if line.startswith("telemetry-on#2")]
    assert "nonstream.cpu_ms_per_req.all 2.600" in second


def test_one_failure_among_replicas_is_still_counted_and_fails_the_run() -> None:
    per_stack = {
        f"{name}#{replica}": {"nonstream.cpu_ms_per_req.all": 2.0, "nonstream.errors": float(replica == 2)}
        for name in ("telemetry-on", "telemetry-off", "dedupe-on")
        for replica in (1, 2)
    }
    merged = deltas.by_config(per_stack)
    assert merged["telemetry-on"]["nonstream.errors"] == 1.0  # its second stack's one, not half of it
    lines: list[str] = []
    assert not deltas.report([merged], lines.append)
    assert any("3 requests failed" in line for line in lines)


def test_a_failed_request_is_reported_and_fails_the_run() -> None:
    windows = [_window(2.5, 2.0, 2.9)]
    windows[0]["dedupe-on"]["nonstream.errors"] = 3.0
    lines: list[str] = []
    assert not deltas.report(windows, lines.append)
    assert any("3 requests failed: every figure above counts them" in line for line in lines)


@pytest.mark.e2e
def test_quick_run_measures_every_configuration_in_one_window(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "deltas.py"), "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "telemetry-on - telemetry-off nonstream.cpu_ms_per_req.all" in proc.stdout
    (raw,) = tmp_path.glob("deltas-*.json")
    (window,) = json.loads(raw.read_text())["windows"]
    assert set(window) == {"telemetry-on", "telemetry-off", "dedupe-on"}
    (stacks,) = json.loads(raw.read_text())["stacks"]  # --quick: one stack per configuration
    assert set(stacks) == {"telemetry-on#1", "telemetry-off#1", "dedupe-on#1"}
    for name, figures in window.items():
        assert figures["nonstream.errors"] == figures["stream.errors"] == 0
        assert figures["nonstream.requests"] > 0 and figures["stream.requests"] > 0
        assert figures["nonstream.cpu_ms_per_req.edge"] > 0
        assert ("nonstream.cpu_ms_per_req.redis" in figures) == (name == "dedupe-on")
        # Each request tokens as asked: 16 per non-streamed reply, 64 per stream, counted from them.
        assert figures["nonstream.tokens_per_request"] == 16
        assert figures["stream.tokens_per_request"] == 64
        # SSE data events per stream, printed beside the per-token figures they move.
        assert figures["nonstream.messages_per_request"] == 1
        assert 1 <= figures["stream.messages_per_request"] <= 65
    # Only the dedupe stack's requests were keyed, and keyed requests cost redis-server its calls.
    assert window["dedupe-on"]["nonstream.cpu_ms_per_req.redis"] > 0.05
