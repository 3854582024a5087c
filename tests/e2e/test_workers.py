"""`aftershock edge|backend --workers 2`: two processes per service on one port, both serving.

SO_REUSEPORT spreads connections (not calls) among the workers, so the clients here open a new
connection per request; each worker's metrics are on its own port (metrics_port + index).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import pytest
from aftershock.stack import Stack
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.scrape import scraped
from tests.stack_support import running_stack

pytestmark = pytest.mark.e2e

REQUESTS = 40


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def _direct_to_backend(target: str, calls: int) -> list[pb.GenerateResponse]:
    """One connection per call: a local subchannel pool keeps channels from sharing one."""

    async def one(i: int) -> pb.GenerateResponse:
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            stub = backend_pb2_grpc.BackendStub(ch)
            request = pb.GenerateRequest(
                request_id=f"w{i}",
                model="sim-fast",
                prompt="workers",
                sampling=pb.SamplingParams(max_tokens=2),
            )
            return await stub.Complete(request, timeout=10)

    return await asyncio.gather(*(one(i) for i in range(calls)))


def test_two_workers_per_service_each_serve_traffic() -> None:
    with running_stack("test_workers", replicas=1, workers=2) as stack:
        assert stack.edge is not None and stack.backend is not None
        assert len(_children(stack.edge.popen.pid)) == 2
        assert len(_children(stack.backend.popen.pid)) == 2
        body = {"model": "sim-fast", "prompt": "workers", "max_tokens": 2}
        for _ in range(REQUESTS):  # a new connection each time
            resp = httpx.post(f"{stack.edge_url}/v1/completions", json=body, headers={"connection": "close"})
            assert resp.status_code == 200, resp.text
        edge = [_served(stack.edge.metrics_port + i, "edge") for i in range(2)]
        assert sum(edge) == REQUESTS and min(edge) > 0, edge
        answers = asyncio.run(_direct_to_backend(stack.backend_target, 16))
        assert all(a.finish_reason for a in answers)
        backend = [_served(stack.backend.metrics_port + i, "backend") for i in range(2)]
        assert sum(backend) == REQUESTS + 16 and min(backend) > 0, backend
        codes = _stop(stack)
    # The supervisors forward SIGTERM; every worker drains and exits cleanly.
    assert codes["edge"] == 0 and codes["backend"] == 0, codes


def _served(metrics_port: int, service: str) -> float:
    return scraped(metrics_port, "aftershock_requests_total", service=service, code="OK")


def _stop(stack: Stack) -> dict[str, int]:
    assert stack.edge is not None and stack.backend is not None
    procs = [stack.edge, stack.backend]
    for proc in procs:
        proc.popen.terminate()
    return {proc.name: proc.popen.wait(30) for proc in procs}
