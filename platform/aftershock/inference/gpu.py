"""GPU utilization and memory through NVML (nvidia-ml-py), where a GPU exists.

On a host without NVML or without a GPU nothing is registered, so the aftershock_gpu_* series are
absent (not 0): a dashboard then shows "no data" rather than an idle GPU that is not there.
A GPU metric must never take a replica down: every NVML call is guarded, a failed one skips that
reading and counts in aftershock_gpu_nvml_errors_total{call}, and the sampler thread keeps going.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry

from aftershock.metrics import GpuMetrics

log = logging.getLogger(__name__)

T = TypeVar("T")


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # the library or the driver is missing: no GPU here
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
    except Exception:
        count = 0
    if count == 0:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)
        return None
    return pynvml


class GpuSampler:
    """Reads every GPU each `interval_s` on a daemon thread (NVML calls block for microseconds)."""

    def __init__(self, nvml: Any, metrics: GpuMetrics, interval_s: float, *, thread: bool = True) -> None:
        self._nvml = nvml
        self._metrics = metrics
        self._interval_s = interval_s
        count = self._guard("nvmlDeviceGetCount", nvml.nvmlDeviceGetCount) or 0
        handles = (
            self._guard("nvmlDeviceGetHandleByIndex", nvml.nvmlDeviceGetHandleByIndex, i)
            for i in range(count)
        )
        self._handles = [(i, h) for i, h in enumerate(handles) if h is not None]
        self._stop = threading.Event()
        self.sample()
        if thread:
            threading.Thread(target=self._run, name="gpu-sampler", daemon=True).start()

    def _guard(self, call: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError (GPU lost, driver reset, timeout) or anything else
            self._metrics.nvml_errors_total.labels(call).inc()
            log.warning("nvml call failed", extra={"call": call, "error": type(exc).__name__})
            return None

    def sample(self) -> None:
        for index, handle in self._handles:
            gpu = str(index)
            nvml = self._nvml
            util = self._guard("nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                self._metrics.utilization_ratio.labels(gpu).set(util.gpu / 100.0)
            mem = self._guard("nvmlDeviceGetMemoryInfo", nvml.nvmlDeviceGetMemoryInfo, handle)
            if mem is not None:
                self._metrics.memory_used_bytes.labels(gpu).set(mem.used)
                self._metrics.memory_total_bytes.labels(gpu).set(mem.total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:  # a bug here must not end the thread's readings for good
                log.exception("gpu sampling failed")

    def stop(self) -> None:
        self._stop.set()


def start_gpu_sampler(registry: CollectorRegistry, interval_s: float = 2.0) -> GpuSampler | None:
    nvml = _nvml()
    if nvml is None:
        return None
    return GpuSampler(nvml, GpuMetrics(registry), interval_s)
