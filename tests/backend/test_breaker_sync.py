"""Breaker openings shared between two backends through a real redis-server."""

from __future__ import annotations

import asyncio
import time

from aftershock.backend.breaker_sync import BreakerSync
from aftershock.breaker import Breaker, BreakerConfig
from aftershock.redis_guard import GuardedRedis, RedisGuardConfig

TARGET = "inference:inference-0"


def _breaker(sync_ref: list[BreakerSync]) -> Breaker:
    class Publish:
        def state_changed(self, target: str, state: str, *, changed: bool) -> None:
            if changed:  # the sync exists by the time the breaker changes state
                sync_ref[0].state_changed(target, state, changed=changed)

        def forgotten(self, target: str) -> None:
            pass

    config = BreakerConfig(fail_max=2, reset_timeout_s=0.5)
    return Breaker(TARGET, config, is_failure=lambda e: True, listeners=[Publish()])


def _guard(url: str, timeout_s: float = 0.25) -> GuardedRedis:
    return GuardedRedis(
        RedisGuardConfig(url, socket_timeout_s=timeout_s, socket_connect_timeout_s=timeout_s), name="test"
    )


def _fail(breaker: Breaker) -> None:
    try:
        with breaker.calling():
            raise ConnectionError("replica down")
    except ConnectionError:
        pass


async def _until(predicate: object, within_s: float = 3.0) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_peer_opening_opens_ours_once(redis_url: str) -> None:
    ref_a: list[BreakerSync] = []
    ref_b: list[BreakerSync] = []
    a, b = _breaker(ref_a), _breaker(ref_b)
    sync_a = BreakerSync(_guard(redis_url), lambda: {TARGET: a}, interval_s=0.1)
    sync_b = BreakerSync(_guard(redis_url), lambda: {TARGET: b}, interval_s=0.1)
    ref_a.append(sync_a)
    ref_b.append(sync_b)
    await sync_a.start()
    await sync_b.start()
    try:
        _fail(a)
        _fail(a)
        assert a.state == "open"
        await _until(lambda: b.state == "open")
        # b recovers on its own after the reset timeout; the same peer event does not re-open it.
        await asyncio.sleep(0.6)
        with b.calling():
            pass
        assert b.state == "closed"
        await asyncio.sleep(0.4)
        assert b.state == "closed"
    finally:
        await sync_a.close()
        await sync_b.close()


async def test_redis_down_means_not_shared_and_no_errors() -> None:
    ref: list[BreakerSync] = []
    a = _breaker(ref)
    sync = BreakerSync(_guard("redis://127.0.0.1:1/0", 0.05), lambda: {TARGET: a}, interval_s=0.05)
    ref.append(sync)
    await sync.start()
    try:
        _fail(a)
        _fail(a)
        await asyncio.sleep(0.2)
        assert a.state == "open"
        assert sync._task is not None and not sync._task.done()
    finally:
        await sync.close()
