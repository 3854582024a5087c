"""GPU series exist exactly when NVML finds a GPU: absent (not zero) on this machine and in CI."""

from __future__ import annotations

import inspect

import pytest
from aftershock.inference.gpu import GpuSampler, _nvml, start_gpu_sampler
from aftershock.metrics import GpuMetrics, new_registry
from prometheus_client import generate_latest


def test_gpu_series_follow_the_hardware() -> None:
    registry = new_registry()
    has_gpu = _nvml() is not None
    sampler = start_gpu_sampler(registry)
    text = generate_latest(registry)
    if has_gpu:
        assert sampler is not None
        assert b'aftershock_gpu_memory_total_bytes{gpu="0"}' in text
        sampler.stop()
    else:
        assert sampler is None
        assert b"aftershock_gpu_" not in text


class FlakyNvml:
    """pynvml's own calls' shapes (its structs and NVMLError) for one GPU; `lost` makes every
    per-device call fail the way a GPU that fell off the bus does."""

    RESERVED = 600 * 2**20  # what the driver keeps for itself

    def __init__(self, v2: bool = True) -> None:
        import pynvml

        self.pynvml = pynvml
        self.nvmlMemory_v2 = pynvml.nvmlMemory_v2
        self.NVMLError = pynvml.NVMLError
        self.lost = False
        self.v2 = v2  # whether the driver has the second memory call

    def _check(self) -> None:
        if self.lost:
            raise self.pynvml.NVMLError(self.pynvml.NVML_ERROR_GPU_IS_LOST)

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        return object()

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> object:
        self._check()
        util = self.pynvml.c_nvmlUtilization_t()
        util.gpu = 70
        return util

    def nvmlDeviceGetMemoryInfo(self, handle: object, version: int | None = None) -> object:
        self._check()
        if version is None:
            mem = self.pynvml.c_nvmlMemory_t()
            mem.used, mem.total = 3 * 2**30 + self.RESERVED, 80 * 2**30
            return mem
        if not self.v2:
            raise self.pynvml.NVMLError(self.pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        mem2 = self.pynvml.c_nvmlMemory_v2_t()
        mem2.version = version
        mem2.used, mem2.reserved, mem2.total = 3 * 2**30, self.RESERVED, 80 * 2**30
        return mem2


def test_the_fake_nvml_calls_as_the_installed_pynvml_does() -> None:
    import pynvml

    fake = FlakyNvml()
    for name in (
        "nvmlDeviceGetCount",
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUtilizationRates",
        "nvmlDeviceGetMemoryInfo",
    ):
        real = list(inspect.signature(getattr(pynvml, name)).parameters)
        assert list(inspect.signature(getattr(fake, name)).parameters) == real, name


@pytest.mark.parametrize("v2", [True, False], ids=["driver-with-v2", "driver-without-v2"])
def test_used_memory_leaves_out_the_drivers_reserve_where_nvml_can_say(v2: bool) -> None:
    # On an H200, NVML's first memory call said 618 MiB used where nvidia-smi said 4 MiB.
    registry = new_registry()
    nvml = FlakyNvml(v2=v2)
    sampler = GpuSampler(nvml, GpuMetrics(registry), 60.0, thread=False)
    sampler.sample()
    used = registry.get_sample_value("aftershock_gpu_memory_used_bytes", {"gpu": "0"})
    assert used == 3 * 2**30 + (0 if v2 else FlakyNvml.RESERVED)
    labels = {"call": "nvmlDeviceGetMemoryInfo"}
    # A driver without the second call is not an error.
    assert not registry.get_sample_value("aftershock_gpu_nvml_errors_total", labels)


def test_a_failing_nvml_call_is_counted_and_never_raises() -> None:
    registry = new_registry()
    nvml = FlakyNvml()
    sampler = GpuSampler(nvml, GpuMetrics(registry), 60.0, thread=False)
    assert registry.get_sample_value("aftershock_gpu_utilization_ratio", {"gpu": "0"}) == 0.7
    nvml.lost = True
    sampler.sample()  # must not raise: a GPU metric never takes the replica down
    sampler.sample()
    errors = {
        call: registry.get_sample_value("aftershock_gpu_nvml_errors_total", {"call": call})
        for call in ("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo")
    }
    assert errors == {"nvmlDeviceGetUtilizationRates": 2.0, "nvmlDeviceGetMemoryInfo": 2.0}
    # The last good reading stays; recovery resumes the readings.
    assert registry.get_sample_value("aftershock_gpu_memory_total_bytes", {"gpu": "0"}) == 80 * 2**30
    nvml.lost = False
    sampler.sample()
    labels = {"call": "nvmlDeviceGetMemoryInfo"}
    failed = registry.get_sample_value("aftershock_gpu_nvml_errors_total", labels)
    assert failed == 2.0
