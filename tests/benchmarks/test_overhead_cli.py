"""benchmarks/overhead.py run the way a user runs it, small, so the benchmark cannot rot unnoticed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import overhead  # noqa: E402
import overhead_report  # noqa: E402
from load import Result, Run  # noqa: E402


def test_errors_stop_the_run_or_are_printed_beside_every_figure(monkeypatch: pytest.MonkeyPatch) -> None:
    run = Run([Result(0.01, 0.01, 16, 1, True), Result(0.02, 0.02, 0, 0, False, "UNAVAILABLE")])
    with pytest.raises(overhead.BenchError, match="1 of 2 requests failed"):
        overhead._check("nonstream_full", run)
    monkeypatch.setattr(overhead, "ALLOW_ERRORS", True)
    overhead._check("nonstream_full", run)
    rounds = [{"nonstream_full.errors": 1.0, "nonstream_full.p50_ms": 3.0}, {"nonstream_full.errors": 2.0}]
    assert overhead_report.errors_beside("nonstream_full.p50_ms", rounds) == "  errors=3"


def _round(redis_us_per_token: float | None) -> overhead_report.Figures:
    """One round's measured figures, every one 1.0, and redis-server's when dedupe ran it."""
    f: overhead_report.Figures = {}
    for way in ("direct", "backend"):
        for kind in ("nonstream", "stream"):
            for q in ("p50", "p95", "p99", "ttft_p50"):
                f[f"open_{kind}_{way}.{q}_ms"] = 1.0
    for scen in ("stream_full", "stream_direct"):
        f[f"{scen}.tokens_per_s"] = 1.0
    for scen in ("nonstream_full", "stream_full", "paced_full"):
        for proc in ("edge", "backend", "inference"):
            f[f"{scen}.cpu_ms_per_req.{proc}"] = f[f"{scen}.cpu_us_per_token.{proc}"] = 1.0
            f[f"{scen}.gc_cpu_ms_per_req.{proc}"] = 0.0
        if redis_us_per_token is not None:
            f[f"{scen}.cpu_ms_per_req.redis"] = f[f"{scen}.cpu_us_per_token.redis"] = redis_us_per_token
    return f


def test_dedupe_delta_per_token_includes_redis_server(capsys: pytest.CaptureFixture[str]) -> None:
    raw = {}
    for name, redis in (("telemetry-off", None), ("dedupe-on", 5.0)):
        figures = _round(redis)
        figures.update(overhead_report.derive(figures))
        raw[name] = [figures]
    overhead_report.print_report(raw)
    deltas = capsys.readouterr().out.split("== dedupe-on minus telemetry-off", 1)[1]
    # edge+backend moved by 0, redis-server's 5 µs per token is the whole delta
    line = next(
        x for x in deltas.splitlines() if x.startswith("stream_full.cpu_us_per_token.edge+backend+redis")
    )
    assert line.split()[1] == "5.000"


@pytest.mark.e2e
def test_quick_run_of_the_base_configuration(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--rounds", "1"]
    proc = subprocess.run(
        [*cmd, "--configs", "base", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT / "platform")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "added_latency_backend_hop_open50.p50_ms" in proc.stdout
    (report,) = tmp_path.glob("overhead-*.json")
    figures = json.loads(report.read_text())["raw"]["telemetry-on"][0]
    for scen in ("nonstream_full", "stream_full", "paced_full", "open_stream_full", "open_nonstream_backend"):
        assert figures[f"{scen}.errors"] == 0
    # The three ways in to the open loops took turns in one window: one steal reading for all three.
    for kind in ("nonstream", "stream"):
        arms = [f"open_{kind}_{way}" for way in ("direct", "backend", "full")]
        assert all(figures[f"{arm}.requests"] > 0 for arm in arms)
        assert len({figures[f"{arm}.steal_pct"] for arm in arms}) == 1
        assert 0 <= figures[f"{arms[0]}.steal_pct"] <= 100
    # Tokens are counted from the streams: 64 per stream, 16 per non-streamed reply.
    assert figures["stream_full.tokens_per_s"] / figures["stream_full.rps"] == pytest.approx(64)
    assert figures["nonstream_full.cpu_ms_per_req.edge"] > 0
    assert figures["stream_full.cpu_us_per_token.edge+backend"] > 0
    # The deltas at one rate are deltas.py's: none here.
    assert not [key for key in figures if key.startswith("rated_")]
