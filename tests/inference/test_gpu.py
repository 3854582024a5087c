"""GPU series exist exactly when NVML finds a GPU: absent (not zero) on this machine and in CI."""

from __future__ import annotations

from aftershock.inference.gpu import _nvml, start_gpu_sampler
from aftershock.metrics import new_registry
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
