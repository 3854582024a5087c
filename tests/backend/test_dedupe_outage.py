"""Dedupe when Redis fails: fail open, the breaker, the probe, and readers falling back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from aftershock.backend.dedupe import Bypass, Claim, Replay
from aftershock.v1 import generation_pb2 as pb

from tests.backend.dedupe_harness import Harness, drain, own, script, wire
from tests.servers import RedisServer


async def test_redis_outage_fails_open_and_recovers(h: Harness, redis_server: RedisServer) -> None:
    d = h.make()
    warm = await d.begin("warm", "fp")  # pooled connections that go stale across the restart
    assert isinstance(warm, Claim)
    await own(warm, script(1))
    assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 1
    assert h.sample("aftershock_breaker_state", {"target": "redis"}) == 0
    redis_server.stop()
    try:
        for _ in range(d.config.breaker.fail_max):
            start = time.monotonic()
            assert isinstance(await d.begin("down", "fp"), Bypass)
            assert time.monotonic() - start < 1.0
        assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 0
        assert h.sample("aftershock_breaker_state", {"target": "redis"}) == 1
        assert h.sample("aftershock_breaker_transitions_total", {"target": "redis", "state": "open"}) == 1
        # Open: answered without touching Redis.
        start = time.monotonic()
        outcome = await d.begin("down", "fp")
        assert isinstance(outcome, Bypass) and outcome.reason == "breaker_open"
        assert time.monotonic() - start < 0.05
        assert h.outcome("bypassed") == d.config.breaker.fail_max + 1

        # serve() still answers (fail open).
        async def generate() -> AsyncIterator[pb.GenerateResponse]:
            for m in script(2):
                yield m

        assert wire(await drain(d.serve("down", "fp", generate))) == wire(script(2))
    finally:
        redis_server.start()
    await asyncio.sleep(d.config.breaker.reset_timeout_s + 0.1)
    back = await d.begin("back", "fp")  # the half-open trial, over a stale connection
    assert isinstance(back, Claim)
    assert h.sample("aftershock_breaker_state", {"target": "redis"}) == 0
    assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 1
    assert h.sample("aftershock_breaker_transitions_total", {"target": "redis", "state": "half-open"}) == 1
    await own(back, script(2))
    assert isinstance(await d.begin("back", "fp"), Replay)


async def test_probe_closes_the_breaker_without_traffic(h: Harness, redis_server: RedisServer) -> None:
    d = h.make(probe_every_s=0.1)
    await d.start()
    assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 1
    redis_server.stop()
    try:
        await asyncio.sleep(0.5)  # three failed probes open the breaker
        assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 0
        assert h.sample("aftershock_breaker_state", {"target": "redis"}) == 1
    finally:
        redis_server.start()
    await asyncio.sleep(d.config.breaker.reset_timeout_s + 0.3)
    assert h.sample("aftershock_breaker_state", {"target": "redis"}) == 0
    assert h.sample("aftershock_redis_up", {"client": "dedupe"}) == 1


async def test_joiner_falls_back_when_redis_dies(h: Harness, redis_server: RedisServer) -> None:
    d = h.make()
    claim = await d.begin("jd", "fp")
    assert isinstance(claim, Claim)
    calls = 0

    async def generate() -> AsyncIterator[pb.GenerateResponse]:
        nonlocal calls
        calls += 1
        for m in script(3, "own"):
            yield m

    joiner = asyncio.create_task(drain(d.serve("jd", "fp", generate)))
    await asyncio.sleep(0.1)
    redis_server.stop()
    try:
        # Its XREAD fails, it starts over, begin bypasses, and it generates by itself (fail open).
        got = await asyncio.wait_for(joiner, 2)
    finally:
        redis_server.start()
    assert calls == 1 and wire(got) == wire(script(3, "own"))
    assert h.outcome("bypassed") == 1
    await claim.abandon()  # Redis lost everything; nothing to release, and nothing raised
