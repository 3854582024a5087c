"""The guarded Redis against a real redis-server: calls through the breaker, up/down reporting, and
a probe that closes the breaker as soon as Redis is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import uvloop
from aftershock.breaker import CLOSED, OPEN, BreakerConfig
from aftershock.redis_guard import GuardedRedis, RedisDown, RedisGuardConfig

from tests.servers import RedisServer


@pytest.fixture
async def guard(redis_url: str) -> AsyncIterator[tuple[GuardedRedis, list[bool]]]:
    ups: list[bool] = []
    config = RedisGuardConfig(
        redis_url,
        socket_timeout_s=0.2,
        socket_connect_timeout_s=0.2,
        breaker=BreakerConfig(fail_max=2, reset_timeout_s=30.0),
        probe_every_s=0,
    )
    g = GuardedRedis(config, name="test", on_up=ups.append)
    yield g, ups
    await g.close()


async def test_calls_report_up_and_a_dead_redis_opens_the_breaker(
    guard: tuple[GuardedRedis, list[bool]], redis_server: RedisServer
) -> None:
    g, ups = guard
    assert await g.call(g.client.ping) is True
    assert ups == [True]
    redis_server.stop()
    try:
        for _ in range(2):  # fail_max failures, each a real call that failed
            with pytest.raises(RedisDown) as info:
                await g.call(g.client.ping)
            assert not info.value.refused
        assert g.breaker.state == OPEN and ups[-1] is False
        started = time.perf_counter()
        with pytest.raises(RedisDown) as info:
            await g.call(g.client.ping)
        assert info.value.refused  # refused without touching Redis
        assert time.perf_counter() - started < 0.05
    finally:
        redis_server.start()
    # The probe finds Redis back and closes the breaker long before its 30 s reset timeout.
    await g.probe()
    assert g.breaker.state == CLOSED and ups[-1] is True
    assert await g.call(g.client.ping) is True


async def test_a_bug_in_the_operation_is_not_a_redis_failure(guard: tuple[GuardedRedis, list[bool]]) -> None:
    g, ups = guard

    async def broken() -> None:
        raise ValueError("our bug")

    for _ in range(3):
        with pytest.raises(ValueError):
            await g.call(broken)
    assert g.breaker.state == CLOSED  # never counted against Redis
    assert ups == []


def _uvloop_write_after_close() -> RuntimeError:
    """What uvloop raises when a client writes to a connection its peer has closed (as redis-py
    does when redis-server stops while a connection is being set up)."""

    async def provoke() -> RuntimeError:
        server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
            await reader.read()  # the peer's close
            writer.close()
            await writer.wait_closed()
            try:
                writer.writelines([b"PING\r\n"])
            except RuntimeError as exc:
                return exc
            raise AssertionError("uvloop took a write on a closed connection")
        finally:
            server.close()

    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(provoke())
    finally:
        loop.close()


async def test_a_write_on_a_connection_redis_closed_is_redis_down(
    guard: tuple[GuardedRedis, list[bool]],
) -> None:
    """The services run on uvloop; a stopped Redis must fail open (RedisDown), not look like a bug."""
    g, ups = guard
    closed = await asyncio.to_thread(_uvloop_write_after_close)  # its own loop, in its own thread

    async def stopped_mid_connect() -> None:
        raise closed

    with pytest.raises(RedisDown):
        await g.call(stopped_mid_connect)
    assert ups == [False]

    async def our_bug() -> None:
        raise RuntimeError("something else")

    with pytest.raises(RuntimeError):
        await g.call(our_bug)
    assert ups == [False]


async def test_replies_are_parsed_by_hiredis(guard: tuple[GuardedRedis, list[bool]]) -> None:
    """redis-py takes its C parser only when hiredis is importable (the `redis[hiredis]` extra);
    without it every reply goes through the pure-Python parser, at more CPU per call."""
    from redis._parsers import _AsyncHiredisParser

    g, _ = guard
    assert await g.call(g.client.ping)
    connection = await g.client.connection_pool.get_connection()
    try:
        assert isinstance(connection._parser, _AsyncHiredisParser)
    finally:
        await g.client.connection_pool.release(connection)
