"""benchmarks/procstat.py: the machine's steal share read from /proc/stat."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from procstat import StealWindow, machine_jiffies


def test_steal_is_the_eighth_field_of_the_cpu_line() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    assert machine_jiffies("cpu  100 1 50 800 9 0 10 30 7 0\n") == (30, 1000)


def test_a_window_reads_the_running_machine() -> None:
    window = StealWindow()
    window.start()
    sum(range(2_000_000))  # a few ticks go by
    assert 0.0 <= window.stop() <= 100.0
