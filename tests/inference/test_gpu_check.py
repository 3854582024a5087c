"""benchmarks/gpu_check.py: its parsing and verdict on recorded readings, and a clear refusal on a
machine without a GPU (the check itself runs only where one is lent)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aftershock.inference.gpu import GpuSampler
from aftershock.metrics import GpuMetrics, new_registry
from prometheus_client import generate_latest

from tests.inference.test_gpu import FlakyNvml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks/gpu_check.py"
_spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
assert _spec is not None and _spec.loader is not None
gpu_check = importlib.util.module_from_spec(_spec)
sys.modules["gpu_check"] = gpu_check  # its dataclass looks its module up there
_spec.loader.exec_module(gpu_check)
GIB = 2**30


def test_parse_smi_reads_one_gpu() -> None:
    text = "0, 97, 12345, 143771\n1, 3, 10, 143771\n"
    assert gpu_check.parse_smi(text) == (0.97, 12345 * 2**20, 143771 * 2**20)
    assert gpu_check.parse_smi(text, gpu=1)[0] == 0.03
    with pytest.raises(ValueError):
        gpu_check.parse_smi(text, gpu=2)


def test_parse_metrics_reads_what_the_sampler_exports() -> None:
    registry = new_registry()
    GpuSampler(FlakyNvml(), GpuMetrics(registry), 60.0, thread=False)
    got = gpu_check.parse_metrics(generate_latest(registry).decode())
    assert got["aftershock_gpu_utilization_ratio"] == 0.7
    assert got["aftershock_gpu_memory_used_bytes"] == 3 * GIB
    assert gpu_check.parse_metrics(generate_latest(registry).decode(), gpu=1) == {}


def reading(phase: str, t: float, smi: tuple[float, float], metrics: tuple[float, float] | None) -> object:
    util, used = smi
    return gpu_check.Reading(
        phase,
        t,
        util,
        int(used * GIB),
        None if metrics is None else metrics[0],
        None if metrics is None else metrics[1] * GIB,
    )


def test_verdict_passes_tracking_series_and_names_what_does_not_track() -> None:
    good = [
        reading("idle", 3, (0.0, 1), (0.0, 1)),
        reading("load", 10, (0.98, 10), (0.95, 10)),
        reading("load", 13, (0.99, 10), (1.0, 10.1)),
        reading("after", 20, (0.0, 1), (0.0, 1)),
    ]
    assert gpu_check.verdict(good) == []
    frozen = [
        reading("idle", 3, (0.0, 1), (0.0, 1)),
        reading("load", 10, (0.98, 10), (0.0, 1)),
        reading("after", 20, (0.0, 1), (0.0, 1)),
    ]
    problems = gpu_check.verdict(frozen)
    assert any("utilization under load" in p for p in problems)
    assert any("memory at 10s (load)" in p for p in problems)
    assert gpu_check.verdict([reading("load", 10, (0.98, 10), None)]) == [
        "the aftershock_gpu_* series were missing from /metrics"
    ]


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine runs the real check")
def test_without_a_gpu_the_check_refuses_clearly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "cannot run here" in done.stderr and "NVIDIA GPU" in done.stderr
