"""benchmarks/scrape.py against a real /metrics port."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from aftershock.metrics import EngineMetrics, new_registry
from aftershock.metrics_http import start_metrics_server
from aftershock.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from scrape import gc_cpu_seconds, sample_sums


def test_gc_cpu_seconds_grows_with_collections() -> None:
    port = start_metrics_server(free_port(), "127.0.0.1", new_registry())
    before = gc_cpu_seconds(port)
    garbage = [[] for _ in range(50_000)]  # something for the collections to walk
    for _ in range(5):
        gc.collect()
    del garbage
    assert gc_cpu_seconds(port) > before


def test_sample_sums_adds_labelled_samples_and_keeps_vllm_names() -> None:
    registry = new_registry()
    engine = EngineMetrics(registry)
    engine.generation_tokens_total.labels("a").inc(2)
    engine.generation_tokens_total.labels("b").inc(3)
    port = start_metrics_server(free_port(), "127.0.0.1", registry)
    sums = sample_sums(port, ("vllm:generation_tokens_total", "vllm:no_such_total"))
    assert sums == {"vllm:generation_tokens_total": 5.0, "vllm:no_such_total": 0.0}
