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

# NVML's answers when a driver lacks the second memory call (pynvml's NVML_ERROR_NOT_SUPPORTED,
# _FUNCTION_NOT_FOUND and _ARGUMENT_VERSION_MISMATCH); a binding without it raises TypeError.
_NO_V2 = frozenset({3, 13, 25})


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
        # The first memory call counts what the driver reserves for itself as used (614 MiB on an
        # idle H200, seen against nvidia-smi's 4 MiB); the second reports it apart, and its "used"
        # is what nvidia-smi shows. Older drivers and bindings have only the first.
        self._memory_version: int | None = getattr(nvml, "nvmlMemory_v2", None)
        self._stop = threading.Event()
        self.sample()
        if thread:
            threading.Thread(target=self._run, name="gpu-sampler", daemon=True).start()

    def _guard(self, call: str, fn: Callable[..., T], *args: Any) -> T | None:
        try:
            return fn(*args)
        except Exception as exc:  # NVMLError (GPU lost, driver reset, timeout) or anything else
            self._failed(call, exc)
            return None

    def _failed(self, call: str, exc: Exception) -> None:
        self._metrics.nvml_errors_total.labels(call).inc()
        log.warning("nvml call failed", extra={"call": call, "error": type(exc).__name__})

    def sample(self) -> None:
        for index, handle in self._handles:
            gpu = str(index)
            nvml = self._nvml
            util = self._guard("nvmlDeviceGetUtilizationRates", nvml.nvmlDeviceGetUtilizationRates, handle)
            if util is not None:
                self._metrics.utilization_ratio.labels(gpu).set(util.gpu / 100.0)
            mem = self._memory(handle)
            if mem is not None:
                self._metrics.memory_used_bytes.labels(gpu).set(mem.used)
                self._metrics.memory_total_bytes.labels(gpu).set(mem.total)

    def _memory(self, handle: Any) -> Any | None:
        nvml = self._nvml
        call = "nvmlDeviceGetMemoryInfo"
        if self._memory_version is not None:
            try:
                return nvml.nvmlDeviceGetMemoryInfo(handle, version=self._memory_version)
            except Exception as exc:
                unsupported = isinstance(exc, TypeError) or getattr(exc, "value", None) in _NO_V2
                if not unsupported:
                    self._failed(call, exc)
                    return None
            log.info("nvml has no memory call v2: used memory includes the driver's reserve")
            self._memory_version = None
        return self._guard(call, nvml.nvmlDeviceGetMemoryInfo, handle)

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
