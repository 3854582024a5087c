"""Per-key token buckets on a real redis-server: bursts, refill, token charges, headers, fail-open."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from aftershock import errors
from aftershock.edge import errors as http_errors
from aftershock.edge.auth import ANONYMOUS, ApiKey
from aftershock.edge.ratelimit import (
    UNCHECKED,
    RateLimitConfig,
    RateLimiter,
    RateLimitExceeded,
    TokensExceedLimit,
    format_duration,
)
from aftershock.edge.ratelimit_script import TAKE
from prometheus_client import CollectorRegistry, Counter, Gauge

from tests.servers import RedisServer

Limiter = Callable[..., Awaitable[RateLimiter]]


def key(name: str = "k", rpm: int | None = None, tpm: int | None = None) -> ApiKey:
    return ApiKey(name=name, key_sha256="0" * 64, rpm=rpm, tpm=tpm)


@pytest.fixture
async def make_limiter(redis_url: str) -> AsyncIterator[Limiter]:
    """RateLimiters on the session's Redis, each test under its own key prefix."""
    made: list[RateLimiter] = []
    prefix = f"test:{uuid.uuid4().hex[:8]}:"

    async def make(**overrides: Any) -> RateLimiter:
        kwargs = overrides.pop("_kwargs", {})
        config = RateLimitConfig(**{"redis_url": redis_url, "key_prefix": prefix, **overrides})
        limiter = RateLimiter(config, **kwargs)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.close()


async def test_burst_up_to_limit_then_refused_with_refill_retry_after(make_limiter: Limiter) -> None:
    limiter = await make_limiter(default_rpm=5, window_s=1.0)
    k = key()
    remaining = []
    for _ in range(5):
        decision = await limiter.check(k, 10)
        assert decision.checked
        remaining.append(int(decision.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [4, 3, 2, 1, 0]
    with pytest.raises(RateLimitExceeded) as exc:
        await limiter.check(k, 10)
    err = exc.value
    # 5 per second refill one request every 200 ms; a few ms have refilled since the burst.
    assert err.retry_after_s is not None and 0.1 < err.retry_after_s <= 0.2
    assert err.error_type == "rate_limit_exceeded"
    assert "'k'" in err.message and "requests" in err.message
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["retry-after-ms"] == str(round(err.retry_after_s * 1000))
    http = http_errors.from_domain(err, "r1")
    assert (http.status, http.headers["retry-after"], http.body["error"]["code"]) == (
        429,
        "1",
        "rate_limit_exceeded",
    )
    # A refused request is not charged: right after the wait, one request is allowed again.
    await asyncio.sleep(err.retry_after_s + 0.01)
    assert (await limiter.check(k, 10)).checked
    with pytest.raises(RateLimitExceeded):
        await limiter.check(k, 10)


async def test_refills_over_time_up_to_capacity(make_limiter: Limiter) -> None:
    limiter = await make_limiter(default_rpm=4, window_s=0.4)
    k = key()
    for _ in range(4):
        await limiter.check(k, None)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(k, None)
    await asyncio.sleep(0.45)  # a whole window: full again, and no more than full
    for _ in range(4):
        await limiter.check(k, None)
    with pytest.raises(RateLimitExceeded):
        await limiter.check(k, None)


async def test_keys_are_independent_and_shared_across_edges(make_limiter: Limiter) -> None:
    edge1 = await make_limiter(default_rpm=2, window_s=60)
    edge2 = await make_limiter(default_rpm=2, window_s=60)  # another edge replica, same Redis
    a, b = key("a"), key("b")
    await edge1.check(a, 1)
    await edge2.check(a, 1)
    with pytest.raises(RateLimitExceeded):
        await edge1.check(a, 1)
    # b is untouched by a's traffic.
    assert (await edge2.check(b, 1)).headers["x-ratelimit-remaining-requests"] == "1"
    # A key's own limit beats the default.
    generous = key("c", rpm=100)
    assert (await edge1.check(generous, 1)).headers["x-ratelimit-limit-requests"] == "100"


async def test_concurrent_requests_are_atomic(make_limiter: Limiter) -> None:
    limiter = await make_limiter(default_rpm=10, window_s=60)
    results = await asyncio.gather(*(limiter.check(key(), 1) for _ in range(30)), return_exceptions=True)
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 10
    assert all(isinstance(r, RateLimitExceeded) for r in results if isinstance(r, BaseException))


async def test_tokens_bucket_charges_max_tokens(make_limiter: Limiter) -> None:
    limiter = await make_limiter(default_tpm=100, window_s=1.0, default_max_tokens_charge=30)
    k = key()
    d = await limiter.check(k, 60)
    assert d.headers["x-ratelimit-remaining-tokens"] == "40"
    assert "x-ratelimit-limit-requests" not in d.headers  # no requests limit: no requests headers
    with pytest.raises(RateLimitExceeded) as exc:
        await limiter.check(k, 50)  # 10 short at 100 tokens/s: about 100 ms
    assert exc.value.retry_after_s is not None and 0.05 < exc.value.retry_after_s <= 0.1
    assert "tokens" in exc.value.message
    d = await limiter.check(k, 40)  # what is left still pays
    assert int(d.headers["x-ratelimit-remaining-tokens"]) < 10
    # No max_tokens: the configured charge.
    fresh = key("fresh")
    assert (await limiter.check(fresh, None)).headers["x-ratelimit-remaining-tokens"] == "70"
    # More than the whole limit can never be served: 400 (SDKs do not retry it), nothing charged.
    with pytest.raises(TokensExceedLimit) as too_big:
        await limiter.check(fresh, 101)
    assert (too_big.value.param, http_errors.from_domain(too_big.value, "r").status) == ("max_tokens", 400)
    assert isinstance(too_big.value, errors.InvalidArgument)


async def test_refused_by_one_bucket_charges_neither(make_limiter: Limiter) -> None:
    registry = CollectorRegistry()
    rejected = Counter("aftershock_ratelimit_rejected", "t", ["bucket"], registry=registry)
    limiter = await make_limiter(
        default_rpm=10, default_tpm=100, window_s=60, _kwargs={"rejected_total": rejected}
    )
    k = key()
    await limiter.check(k, 90)
    with pytest.raises(RateLimitExceeded) as exc:
        await limiter.check(k, 20)
    assert registry.get_sample_value("aftershock_ratelimit_rejected_total", {"bucket": "tokens"}) == 1
    assert registry.get_sample_value("aftershock_ratelimit_rejected_total", {"bucket": "requests"}) == 0
    assert exc.value.headers["x-ratelimit-remaining-requests"] == "9"  # the refused request cost nothing
    d = await limiter.check(k, 10)
    assert (d.headers["x-ratelimit-remaining-requests"], d.headers["x-ratelimit-remaining-tokens"]) == (
        "8",
        "0",
    )


async def test_headers(make_limiter: Limiter) -> None:
    limiter = await make_limiter(default_rpm=60, default_tpm=1000)  # per minute
    d = await limiter.check(key(), 100)
    assert dict(d.headers) == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "1s",  # one request of 60/min refills in a second
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "6s",
    }
    d = await limiter.check(key("big", tpm=1000), 1000)
    assert d.headers["x-ratelimit-reset-tokens"] == "1m0s"
    # Unlimited keys and no Redis: nothing checked, no headers.
    assert await limiter.check(key("free", rpm=0, tpm=0), 5) is UNCHECKED
    assert await RateLimiter(RateLimitConfig(default_rpm=1)).check(ANONYMOUS, 5) is UNCHECKED


def test_format_duration() -> None:
    cases = {0: "0s", 17: "17ms", 999: "999ms", 1000: "1s", 8640: "8.64s", 59_999: "59.999s",
             60_000: "1m0s", 360_000: "6m0s", 90_500: "1m30.5s", 3_723_000: "1h2m3s"}  # fmt: skip
    assert {ms: format_duration(ms) for ms in cases} == cases


async def test_fail_open_when_redis_is_down_and_resume(
    make_limiter: Limiter, redis_server: RedisServer, redis_url: str
) -> None:
    registry = CollectorRegistry()
    up = Gauge("aftershock_redis_up", "t", ["client"], registry=registry)
    fail_open = Counter("aftershock_ratelimit_fail_open", "t", ["reason"], registry=registry)
    rejected = Counter("aftershock_ratelimit_rejected", "t", ["bucket"], registry=registry)

    def opened(reason: str) -> float | None:
        return registry.get_sample_value("aftershock_ratelimit_fail_open_total", {"reason": reason})

    limiter = await make_limiter(
        default_rpm=1000,
        circuit_open_s=0.3,
        probe_every_s=0,  # only requests probe here, so the counts below are exact
        _kwargs={
            "redis_up": up.labels("ratelimit"),
            "fail_open_total": fail_open,
            "rejected_total": rejected,
        },
    )
    await limiter.start()
    k = key()
    assert (await limiter.check(k, 1)).checked
    assert registry.get_sample_value("aftershock_redis_up", {"client": "ratelimit"}) == 1
    redis_server.stop()
    try:
        for _ in range(5):
            started = time.perf_counter()
            assert await limiter.check(k, 1) is UNCHECKED  # allowed, no headers
            assert time.perf_counter() - started < 0.5
        assert registry.get_sample_value("aftershock_redis_up", {"client": "ratelimit"}) == 0
        assert opened("redis_error") == 1
        assert opened("circuit_open") == 4
        # Past the circuit's window, one probe finds Redis still down, and the circuit opens again.
        await asyncio.sleep(0.35)
        assert await limiter.check(k, 1) is UNCHECKED
        assert opened("redis_error") == 2
    finally:
        redis_server.start()
    assert await limiter.check(k, 1) is UNCHECKED  # still inside the circuit's window: Redis skipped
    await asyncio.sleep(0.35)
    # Back: the restarted Redis has no script cached (NOSCRIPT), and the pooled connections are dead.
    d = await limiter.check(k, 1)
    assert d.checked and d.headers["x-ratelimit-remaining-requests"] == "999"  # restarted empty
    assert registry.get_sample_value("aftershock_redis_up", {"client": "ratelimit"}) == 1


async def test_background_probe_tracks_redis_without_traffic(
    make_limiter: Limiter, redis_server: RedisServer, redis_url: str
) -> None:
    registry = CollectorRegistry()
    up = Gauge("aftershock_redis_up", "t", ["client"], registry=registry)
    limiter = await make_limiter(
        default_rpm=10, circuit_open_s=30, probe_every_s=0.05, _kwargs={"redis_up": up.labels("ratelimit")}
    )

    def redis_up() -> float | None:
        return registry.get_sample_value("aftershock_redis_up", {"client": "ratelimit"})

    async def until(value: float) -> None:
        for _ in range(100):
            if redis_up() == value:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"redis_up never became {value}")

    await limiter.start()
    assert redis_up() == 1
    redis_server.stop()
    try:
        await until(0)  # no request needed to notice
        assert await limiter.check(key(), 1) is UNCHECKED
    finally:
        redis_server.start()
    await until(1)
    # The probe closed the circuit long before circuit_open_s (30 s): requests are checked again.
    assert (await limiter.check(key(), 1)).checked


async def test_noscript_after_restart_and_flush(
    make_limiter: Limiter, redis_server: RedisServer, redis_url: str
) -> None:
    limiter = await make_limiter(default_rpm=10, window_s=60, probe_every_s=0)
    await limiter.start()
    admin = aioredis.Redis.from_url(redis_url)
    try:
        sha = limiter._take.sha
        assert (await admin.script_exists(sha)) == [True]
        await limiter.check(key(), 1)
        await admin.script_flush()
        assert (await admin.script_exists(sha)) == [False]
        d = await limiter.check(key(), 1)
        assert d.headers["x-ratelimit-remaining-requests"] == "8"  # reloaded, ran once, not twice
        assert (await admin.script_exists(sha)) == [True]
        await admin.aclose()
        redis_server.restart()
        admin = aioredis.Redis.from_url(redis_url)
        assert (await admin.script_exists(sha)) == [False]
        # Stale pooled connection and NOSCRIPT in one call: still served by Redis, not failed open.
        d = await limiter.check(key(), 1)
        assert d.checked and d.headers["x-ratelimit-remaining-requests"] == "9"
        assert limiter.fail_open_count == 0
    finally:
        await admin.aclose()


async def test_unresponsive_redis_times_out_fast() -> None:
    """A Redis that accepts connections and never answers (a hung server, a black hole)."""
    conns: list[asyncio.StreamWriter] = []

    async def swallow(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limiter = RateLimiter(
        RateLimitConfig(redis_url=f"redis://127.0.0.1:{port}/0", default_rpm=5, socket_timeout_s=0.1)
    )
    try:
        started = time.perf_counter()
        assert await limiter.check(key(), 1) is UNCHECKED
        assert time.perf_counter() - started < 0.5
        started = time.perf_counter()
        assert await limiter.check(key(), 1) is UNCHECKED  # circuit open: no wait at all
        assert time.perf_counter() - started < 0.05
        assert limiter.fail_open_count == 2
    finally:
        await limiter.close()
        for w in conns:
            w.close()
        server.close()
        await server.wait_closed()


async def test_bucket_state_in_redis(make_limiter: Limiter, redis_url: str) -> None:
    """The layout the module documents: one hash per bucket, hash-tagged, expiring once full again."""
    limiter = await make_limiter(default_rpm=60, window_s=60)
    await limiter.check(key("team-a"), 1)
    admin = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        name = f"{limiter.config.key_prefix}{{team-a}}:requests"
        state = await admin.hgetall(name)
        assert float(state["t"]) == 59
        server_us = int((await admin.time())[0]) * 1_000_000
        assert abs(int(state["ts"]) - server_us) < 5_000_000  # microseconds, stored exactly
        assert 1000 < await admin.pttl(name) <= 2000  # refill time (1 s) plus a second of slack
    finally:
        await admin.aclose()
    assert "redis.call('TIME')" in TAKE
