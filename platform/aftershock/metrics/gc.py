"""The garbage collector's CPU, collections and frozen objects, on every service's /metrics.

prometheus_client's own GC collector counts collections and collected objects but not time, and
time is what matters here: a full collection of a service's heap holds its event loop for tens of
milliseconds, and telemetry's spans make collections frequent (see aftershock.heap).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

GENERATIONS = ("0", "1", "2")


class _Account:
    """A gc callback: CPU of the collecting thread from each collection's start to its stop."""

    def __init__(self) -> None:
        self.cpu_s = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        # Thread CPU, not wall time: on a busy machine the wall clock also counts preemption.
        if phase == "start":
            self._started = time.thread_time()
            return
        generation = info["generation"]
        self.cpu_s[generation] += time.thread_time() - self._started
        self.collections[generation] += 1


# One per process: every registry (tests build many) reads the same callback's account.
_ACCOUNT = _Account()


class GcCollector(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        if _ACCOUNT not in gc.callbacks:
            gc.callbacks.append(_ACCOUNT)
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            "aftershock_gc_cpu_seconds",
            "CPU spent in garbage collections since the process started, by generation (2: full).",
            labels=["generation"],
        )
        count = CounterMetricFamily(
            "aftershock_gc_collections",
            "Garbage collections, by generation (2: full).",
            labels=["generation"],
        )
        for generation, name in enumerate(GENERATIONS):
            cpu.add_metric([name], _ACCOUNT.cpu_s[generation])
            count.add_metric([name], _ACCOUNT.collections[generation])
        yield cpu
        yield count
        yield GaugeMetricFamily(
            "aftershock_gc_frozen_objects",
            "Objects frozen once the service started serving; no collection scans them.",
            value=gc.get_freeze_count(),
        )
