"""GPU check: the inference service's NVML series follow what `nvidia-smi` reads while a GPU works.

    python benchmarks/gpu_check.py [--load-s 60] [--out DIR]      (or: bash scripts/gpu-check.sh)

For a GPU machine with PyTorch and nvidia-ml-py but no vllm (the sim engine serves; the GPU is loaded
by a PyTorch matmul loop in this process). It starts `python -m aftershock inference` with its
/metrics port, samples aftershock_gpu_utilization_ratio / aftershock_gpu_memory_used_bytes from
/metrics and `nvidia-smi --query-gpu` side by side (idle, under load, idle again), prints the table
and a verdict, and writes gpu_check.json to --out. Exit 0: the series track nvidia-smi; 1: they do
not; 2: this machine cannot run the check (no GPU, no nvidia-smi, missing packages). About 2 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SMI_QUERY = "--query-gpu=index,utilization.gpu,memory.used,memory.total"
MIB = 2**20
# Utilization is a sampled average over different windows in NVML's and nvidia-smi's readings.
UTIL_TOLERANCE = 0.25
MEM_TOLERANCE_BYTES = 512 * MIB


@dataclass
class Reading:
    phase: str
    t_s: float
    smi_util: float
    smi_used: int
    metric_util: float | None
    metric_used: float | None


def parse_smi(text: str, gpu: int = 0) -> tuple[float, int, int]:
    """`nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total --format=csv,noheader,
    nounits` -> (utilization 0..1, used bytes, total bytes) of one GPU."""
    for line in text.strip().splitlines():
        index, util, used, total = (field.strip() for field in line.split(","))
        if int(index) == gpu:
            return float(util) / 100.0, int(float(used)) * MIB, int(float(total)) * MIB
    raise ValueError(f"GPU {gpu} not in nvidia-smi output: {text!r}")


def parse_metrics(text: str, gpu: int = 0) -> dict[str, float]:
    """The aftershock_gpu_* samples of one GPU from a /metrics body (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("aftershock_gpu_") and sample.labels.get("gpu") == str(gpu):
                found[sample.name] = sample.value
    return found


def verdict(readings: list[Reading]) -> list[str]:
    """What is wrong with the readings (empty: the series track nvidia-smi)."""
    problems: list[str] = []
    loaded = [r for r in readings if r.phase == "load"]
    if not loaded or any(r.metric_util is None or r.metric_used is None for r in readings):
        return ["the aftershock_gpu_* series were missing from /metrics"]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    smi_util, metric_util = mean([r.smi_util for r in loaded]), mean([r.metric_util or 0.0 for r in loaded])
    if smi_util < 0.5:
        problems.append(f"the load did not load the GPU (nvidia-smi {smi_util:.0%})")
    if abs(smi_util - metric_util) > UTIL_TOLERANCE:
        problems.append(f"utilization under load: metrics {metric_util:.0%} vs nvidia-smi {smi_util:.0%}")
    for r in readings:
        if abs(r.smi_used - (r.metric_used or 0.0)) > MEM_TOLERANCE_BYTES:
            problems.append(
                f"memory at {r.t_s:.0f}s ({r.phase}): metrics {(r.metric_used or 0) / MIB:.0f} MiB"
                f" vs nvidia-smi {r.smi_used / MIB:.0f} MiB"
            )
    idle = [r for r in readings if r.phase == "idle"]
    if (
        idle
        and max(r.metric_used or 0.0 for r in loaded) - min(r.metric_used or 0.0 for r in idle) < 1024 * MIB
    ):
        problems.append("memory used did not rise by 1 GiB under load in the metrics")
    return problems


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _preflight() -> str | None:
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi on PATH: this check needs an NVIDIA GPU machine"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU: this check needs an NVIDIA GPU machine"
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return "nvidia-ml-py (pynvml) is not installed"
    return None


def _service_imports() -> str | None:
    """Whether this Python can run the inference service (its dependencies beside PyTorch's)."""
    code = "import aftershock.cli, aftershock.runtime, aftershock.inference.service, aftershock.inference.sim"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "platform"))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        return f"the inference service cannot start here ({last}); see scripts/gpu-check.sh"
    return None


def _load_gpu(stop: threading.Event, hold_gib: float) -> None:
    """Matmuls back to back on GPU 0, holding `hold_gib` of extra memory, until `stop`."""
    import torch

    held = torch.empty(int(hold_gib * 2**30), dtype=torch.uint8, device="cuda:0")
    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.float16)
    while not stop.is_set():
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()
    del held, a
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load-s", type=float, default=60.0)
    ap.add_argument("--idle-s", type=float, default=12.0)
    ap.add_argument("--hold-gib", type=float, default=8.0)
    ap.add_argument("--every-s", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    args = ap.parse_args(argv)
    why = _preflight() or _service_imports()
    if why is not None:
        print(f"gpu_check: cannot run here: {why}", file=sys.stderr)
        return 2
    metrics_port = _free_port()
    env = dict(
        os.environ,
        PYTHONPATH=f"{ROOT / 'platform'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        AFTERSHOCK_INFERENCE_PORT=str(_free_port()),
        AFTERSHOCK_INFERENCE_METRICS_PORT=str(metrics_port),
        AFTERSHOCK_INFERENCE_ENGINE="sim",
    )
    service = subprocess.Popen([sys.executable, "-m", "aftershock", "inference"], env=env)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    readings: list[Reading] = []
    start = time.monotonic()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if service.poll() is not None or time.monotonic() > deadline:
                    print("gpu_check: the inference service did not start", file=sys.stderr)
                    return 2
                time.sleep(0.5)

        def sample(phase: str, seconds: float) -> None:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(args.every_s)
                smi = subprocess.run(
                    ["nvidia-smi", SMI_QUERY, "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                util, used, _ = parse_smi(smi)
                got = parse_metrics(urllib.request.urlopen(url, timeout=5).read().decode())
                r = Reading(
                    phase,
                    time.monotonic() - start,
                    util,
                    used,
                    got.get("aftershock_gpu_utilization_ratio"),
                    got.get("aftershock_gpu_memory_used_bytes"),
                )
                readings.append(r)
                print(
                    f"{r.t_s:6.1f}s {phase:5} util smi {util:5.0%} metrics {r.metric_util or 0:5.0%}  "
                    f"mem smi {used / MIB:8.0f} MiB metrics {(r.metric_used or 0) / MIB:8.0f} MiB",
                    flush=True,
                )

        sample("idle", args.idle_s)
        stop = threading.Event()
        worker = threading.Thread(target=_load_gpu, args=(stop, args.hold_gib), daemon=True)
        worker.start()
        time.sleep(5)  # let the load ramp up
        sample("load", args.load_s)
        stop.set()
        worker.join(30)
        sample("after", args.idle_s)
    finally:
        service.terminate()
        service.wait(30)
    problems = verdict(readings)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"readings": [asdict(r) for r in readings], "problems": problems}
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(
        "gpu_check: PASS, the NVML series track nvidia-smi"
        if not problems
        else "gpu_check: FAIL\n  " + "\n  ".join(problems)
    )
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
