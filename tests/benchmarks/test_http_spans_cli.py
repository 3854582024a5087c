"""benchmarks/http_spans.py run the way a user runs it, small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_measures_each_way_with_its_span() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "http_spans.py"), "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    for way, spans_per_request in (("none", 0.0), ("edge", 1.0), ("instrumentor", 1.0)):
        cpu_us, _, low, high, spans = (float(x) for x in rows[way])
        assert 0 < low <= cpu_us <= high, proc.stdout
        # A way that made no span, or one per ASGI message, would compare something else.
        assert spans == spans_per_request, proc.stdout
