"""benchmarks/procstat.py's reading of a service's own GC figure, against a real /metrics port."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from aftershock.metrics import new_registry
from aftershock.metrics_http import start_metrics_server
from aftershock.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from procstat import gc_cpu_seconds


def test_gc_cpu_seconds_grows_with_collections() -> None:
    port = start_metrics_server(free_port(), "127.0.0.1", new_registry())
    before = gc_cpu_seconds(port)
    garbage = [[] for _ in range(50_000)]  # something for the collections to walk
    for _ in range(5):
        gc.collect()
    del garbage
    assert gc_cpu_seconds(port) > before
