"""GPU utilization and memory through NVML (nvidia-ml-py), where a GPU exists.

On a host without NVML or without a GPU nothing is registered, so the aftershock_gpu_* series are
absent (not 0): a dashboard then shows "no data" rather than an idle GPU that is not there.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from prometheus_client import CollectorRegistry

from aftershock.metrics import GpuMetrics

log = logging.getLogger(__name__)


def _nvml() -> Any | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # the library or the driver is missing: no GPU here
        return None
    if pynvml.nvmlDeviceGetCount() == 0:
        pynvml.nvmlShutdown()
        return None
    return pynvml


class GpuSampler:
    """Reads every GPU each `interval_s` on a daemon thread (NVML calls block for microseconds)."""

    def __init__(self, nvml: Any, metrics: GpuMetrics, interval_s: float) -> None:
        self._nvml = nvml
        self._metrics = metrics
        self._interval_s = interval_s
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
        self._stop = threading.Event()
        self.sample()
        threading.Thread(target=self._run, name="gpu-sampler", daemon=True).start()

    def sample(self) -> None:
        for index, handle in enumerate(self._handles):
            gpu = str(index)
            util = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            self._metrics.utilization_ratio.labels(gpu).set(util.gpu / 100.0)
            self._metrics.memory_used_bytes.labels(gpu).set(mem.used)
            self._metrics.memory_total_bytes.labels(gpu).set(mem.total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.sample()
            except Exception:
                log.exception("nvml sampling failed")

    def stop(self) -> None:
        self._stop.set()


def start_gpu_sampler(registry: CollectorRegistry, interval_s: float = 2.0) -> GpuSampler | None:
    nvml = _nvml()
    if nvml is None:
        return None
    return GpuSampler(nvml, GpuMetrics(registry), interval_s)
