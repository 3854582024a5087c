"""CPU of the inference service with the `openai` engine, A/B between source trees, interleaved.

    PYTHONPATH=$PWD/platform .venv/bin/python benchmarks/openai_ab.py \
        --tree before=/tmp/before/platform --tree after=$PWD/platform --rounds 3

Per round and tree: the misbehaving upstream (aftershock.chaos.upstream, no faults, no inter-token
delay) and one inference process relaying to it; 32 closed-loop gRPC clients call Inference.Generate
directly with 16-token requests, non-streamed then streamed. CPU per request of the inference
process (and of the upstream, which is the same code on both sides) from /proc utime+stime.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import grpc  # noqa: E402
import httpx  # noqa: E402
from aftershock.ports import free_port  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from load import GrpcTarget, closed_loop  # noqa: E402
from procstat import CpuWindow  # noqa: E402

MODEL = "bench-up"


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _serving(target: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("inference did not become ready")


async def _answers(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(url, timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


async def _round(tree: str, n: int) -> dict[str, float]:
    up_port, inf_port = free_port(), free_port()
    python = sys.executable
    upstream = _spawn(
        [
            python,
            "-m",
            "aftershock.chaos.upstream",
            "--port",
            str(up_port),
            "--itl-s",
            "0",
            "--models",
            MODEL,
        ],
        {"PYTHONPATH": str(HERE.parent / "platform")},
    )
    await _answers(f"http://127.0.0.1:{up_port}/v1/models")  # the engine learns its models at start
    inference = _spawn(
        [
            python,
            "-m",
            "aftershock",
            "inference",
            "--engine=openai",
            f"--port={inf_port}",
            "--metrics-port=0",
        ],
        {
            "PYTHONPATH": tree,
            "OTEL_SDK_DISABLED": "true",
            "AFTERSHOCK_INFERENCE_OPENAI_BASE_URL": f"http://127.0.0.1:{up_port}/v1",
        },
    )
    out: dict[str, float] = {}
    try:
        await _serving(f"127.0.0.1:{inf_port}")
        pids = {"inference": inference.pid, "upstream": upstream.pid}
        for name, stream in (("nonstream", False), ("stream", True)):
            target = GrpcTarget(f"127.0.0.1:{inf_port}", MODEL, 16, stream)
            try:
                await closed_loop(target.send, 32, 100)  # warm-up
                cpu = CpuWindow(pids)
                cpu.start()
                run = await closed_loop(target.send, 32, n)
                spent = cpu.stop()
            finally:
                await target.close()
            ok = len(run.ok())
            out[f"{name}.errors"] = float(len(run.results) - ok)
            for proc, seconds in spent.items():
                out[f"{name}.cpu_ms_per_req.{proc}"] = seconds * 1000 / max(1, ok)
    finally:
        for proc in (inference, upstream):
            proc.terminate()
            proc.wait(15)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", action="append", required=True, help="NAME=PATH of a platform/ directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    trees = dict(t.split("=", 1) for t in args.tree)
    raw: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
    for rnd in range(args.rounds):
        for name, path in trees.items():
            raw[name].append(asyncio.run(_round(path, args.requests)))
            print(f"round {rnd + 1} {name}: done", file=sys.stderr)
    for key in sorted(next(iter(raw.values()))[0]):
        cells = []
        for name in trees:
            vals = [r[key] for r in raw[name]]
            cells.append(f"{name}: {statistics.median(vals):8.3f} [{min(vals):.3f}-{max(vals):.3f}]")
        print(f"{key:36s} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
