"""benchmarks/span_encoding.py run the way a user runs it, small."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_prints_both_encoders() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "platform")}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "span_encoding.py"), "--quick"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    for encoder in ("library", "in_place"):
        figures = [float(x) for x in rows[encoder]]
        assert len(figures) == 5 and all(f > 0 for f in figures[:4]), proc.stdout
