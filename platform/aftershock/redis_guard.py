"""One guarded Redis client: the connection policy, a breaker and a background probe.

Every use of Redis here is optional (rate limits, dedupe and breaker sharing all fail open), so each
goes through this: short timeouts, one immediate resend on a connection error (it replaces a stale
pooled connection after a Redis restart; timeouts are not resent, the breaker decides what happens
next), a breaker so that a dead Redis costs a request nothing but a state check, and a PING every
`probe_every_s` that keeps "is Redis up" current and closes the breaker without traffic.

Whether Redis is up reaches the service through `on_up` (the service's aftershock_redis_up child),
so this module knows no service's metrics. It sits beside breaker.py, in the layer that both the
edge and the backend may import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aftershock import errors
from aftershock.breaker import Breaker, BreakerConfig, BreakerListener
from aftershock.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 0.25
DEFAULT_PROBE_EVERY_S = 5.0


@dataclass(frozen=True)
class RedisGuardConfig:
    url: str
    # Short, so that an unreachable Redis costs a request little before the breaker opens.
    socket_timeout_s: float = DEFAULT_TIMEOUT_S
    socket_connect_timeout_s: float = DEFAULT_TIMEOUT_S
    breaker: BreakerConfig = field(default_factory=lambda: BreakerConfig(reset_timeout_s=5.0))
    # 0 disables the background PING (then only calls move the breaker and on_up).
    probe_every_s: float = DEFAULT_PROBE_EVERY_S

    def __post_init__(self) -> None:
        if self.socket_timeout_s <= 0 or self.socket_connect_timeout_s <= 0:
            raise ValueError("Redis timeouts must be positive")
        if self.probe_every_s < 0:
            raise ValueError("probe_every_s must not be negative")


class RedisDown(Exception):
    """A Redis call failed (`refused` False) or the breaker refused it without calling (True)."""

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.refused = refused


def is_redis_failure(exc: BaseException) -> bool:
    """Only Redis being unreachable or failing counts; a cancelled call or our own bug does not."""
    return isinstance(exc, (RedisError, OSError, TimeoutError)) or _closed_by_peer(exc)


def _closed_by_peer(exc: BaseException) -> bool:
    """uvloop's answer to a write on a connection the peer has already closed: a RuntimeError where
    asyncio's own loop drops the write and the read then fails (MagicStack/uvloop#506). redis-py
    catches neither, so a Redis that stops while a connection is being set up would otherwise
    surface as our bug (INTERNAL) instead of Redis being down."""
    return isinstance(exc, RuntimeError) and str(exc).endswith("the handler is closed")


class GuardedRedis:
    """`await guard.call(lambda: guard.client.get(k))`: one Redis call, through the breaker."""

    def __init__(
        self,
        config: RedisGuardConfig,
        *,
        name: str,
        on_up: Callable[[bool], None] | None = None,
        breaker_listeners: Sequence[BreakerListener] = (),
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.config = config
        self.name = name
        self._on_up = on_up
        self._clock = clock
        self.breaker = Breaker(
            "redis", config.breaker, is_failure=is_redis_failure, listeners=breaker_listeners
        )
        self._clients: list[aioredis.Redis] = []
        self.client = self.extra_client(config.socket_timeout_s)
        self._prober: asyncio.Task[None] | None = None
        self._up: bool | None = None

    def extra_client(self, socket_timeout_s: float) -> aioredis.Redis:
        """A second pool with the same policy and another read timeout (for blocking reads)."""
        client: aioredis.Redis = aioredis.Redis.from_url(
            self.config.url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=self.config.socket_connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # RESP2: one reply shape on every Redis version and proxy we may sit behind.
            protocol=2,
        )
        self._clients.append(client)
        return client

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call through the breaker; RedisDown when it fails or is refused."""
        try:
            with self.breaker.calling():
                result = await op()
        except errors.Unavailable as exc:  # the breaker refused without calling
            raise RedisDown(str(exc), refused=True) from exc
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            self._mark(False, exc)
            raise RedisDown(repr(exc), refused=False) from exc
        self._mark(True)
        return result

    async def start(self) -> None:
        """Probe now and then every probe_every_s."""
        await self.probe()
        if self.config.probe_every_s > 0 and self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name=f"{self.name}-redis-probe")

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        for client in self._clients:
            await client.aclose()

    async def probe(self) -> None:
        """PING. Through the breaker when it admits a call; otherwise directly, and a success closes
        the breaker at once (Redis is back: no need to wait out its reset timeout)."""
        if self.breaker.admits():
            with contextlib.suppress(RedisDown):
                await self.call(self.client.ping)
            return
        try:
            await self.client.ping()
        except Exception as exc:
            if not is_redis_failure(exc):
                raise
            self._mark(False, exc)
        else:
            self.breaker.close()
            self._mark(True)

    async def _probe_loop(self) -> None:
        while True:
            await self._clock.sleep(self.config.probe_every_s)
            await self.probe()

    def _mark(self, up: bool, exc: BaseException | None = None) -> None:
        if up != self._up:
            if up:
                log.info("redis is up", extra={"client": self.name})
            else:
                log.warning("redis failed; failing open", extra={"client": self.name, "error": repr(exc)})
        self._up = up
        if self._on_up is not None:
            self._on_up(up)
