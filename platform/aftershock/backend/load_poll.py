"""Polling each healthy replica's engine load for placement (Inference.GetLoad).

Polled rather than piggybacked on responses so an idle replica's load is current too; one small
unary call per replica per interval. A replica that does not answer reports no load, and placement
falls back to the backend's own in-flight count for it.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

from aftershock.backend.placement import EngineLoad
from aftershock.backend.replicas import Replica, ReplicaPool
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.v1 import inference_pb2

_REQUEST = inference_pb2.GetLoadRequest()
UNKNOWN = EngineLoad()


async def poll_once(replica: Replica, timeout_s: float) -> None:
    try:
        report = await replica.stub.GetLoad(_REQUEST, timeout=timeout_s)
    except grpc.aio.AioRpcError:
        replica.load = UNKNOWN
        return
    replica.load = EngineLoad(report.running, report.waiting, report.kv_cache_usage)


async def poll_loads(pool: ReplicaPool, every_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
    while True:
        healthy = [r for r in pool.replicas.values() if r.healthy]
        with contextlib.suppress(Exception):
            await asyncio.gather(*(poll_once(r, every_s) for r in healthy))
        for replica in pool.replicas.values():
            if not replica.healthy:
                replica.load = UNKNOWN
        await clock.sleep(every_s)
