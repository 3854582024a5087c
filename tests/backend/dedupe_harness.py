"""Shared by the dedupe tests: a config for a real redis-server, a harness of Dedupe instances
(backend processes, as far as Redis can tell), and scripted generations."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

from aftershock.backend.dedupe import Claim, Dedupe, DedupeConfig
from aftershock.breaker import BreakerConfig
from aftershock.metrics import BackendMetrics
from aftershock.v1 import generation_pb2 as pb
from prometheus_client import CollectorRegistry

LEASE_MS = 400


def config(url: str, **overrides: object) -> DedupeConfig:
    base = DedupeConfig(
        redis_url=url,
        key_prefix=f"test:{uuid.uuid4().hex[:8]}:",
        lease_ms=LEASE_MS,
        renew_every_ms=100,
        result_ttl_s=0.6,
        join_poll_ms=50,
        socket_timeout_s=0.3,
        socket_connect_timeout_s=0.3,
        breaker=BreakerConfig(fail_max=3, reset_timeout_s=0.5),
        probe_every_s=0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


class Harness:
    def __init__(self, url: str) -> None:
        self.url = url
        self.registry = CollectorRegistry()
        self.metrics = BackendMetrics(self.registry)
        self.instances: list[Dedupe] = []
        self.prefix = f"test:{uuid.uuid4().hex[:8]}:"

    def make(self, **overrides: object) -> Dedupe:
        """A Dedupe instance (a backend process, as far as Redis can tell) sharing this test's keys."""
        d = Dedupe(config(self.url, key_prefix=self.prefix, **overrides), self.metrics)
        self.instances.append(d)
        return d

    def outcome(self, name: str) -> float:
        v = self.registry.get_sample_value("aftershock_dedupe_requests_total", {"outcome": name})
        return v or 0.0

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.registry.get_sample_value(name, labels or {})


def request(prompt: str = "hello", **kw: object) -> pb.GenerateRequest:
    return pb.GenerateRequest(
        request_id=uuid.uuid4().hex,
        model="sim-small",
        prompt=prompt,
        sampling=pb.SamplingParams(max_tokens=8, seed=7),
        **kw,  # type: ignore[arg-type]
    )


def script(n: int = 6, prefix: str = "t", *, reproducible: bool = True) -> list[pb.GenerateResponse]:
    """A generation: n messages, the last one carrying the finish reason."""
    out = []
    for i in range(n):
        msg = pb.GenerateResponse(
            tokens=[f"{prefix}{i} ", "x"],
            prompt_tokens=3,
            completion_tokens=2 * (i + 1),
            reproducible=reproducible,
        )
        if i == n - 1:
            msg.finish_reason = pb.FINISH_REASON_STOP
        out.append(msg)
    return out


def wire(msgs: list[pb.GenerateResponse]) -> list[bytes]:
    return [m.SerializeToString() for m in msgs]


async def drain(it: AsyncIterator[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    return [m async for m in it]


async def own(
    claim: Claim, msgs: list[pb.GenerateResponse], gap_s: float = 0.005
) -> list[pb.GenerateResponse]:
    for m in msgs:
        await claim.publish(m)
        await asyncio.sleep(gap_s)
    assert await claim.finish()
    return msgs
