"""Breaker state shared across backend replicas through Redis (optional).

When one backend opens a breaker on an inference replica, the others open theirs too instead of
each paying fail_max failures to learn the same thing. Never on the request path and never
blocking the event loop: local state changes are published by a background task, and peers'
states are read by a poll loop. Redis being down only means breakers are not shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from functools import partial

from aftershock.breaker import OPEN, Breaker
from aftershock.redis_guard import GuardedRedis, RedisDown

log = logging.getLogger(__name__)

KEY_PREFIX = "aftershock:breaker:"


class BreakerSync:
    """A BreakerListener for the replicas' breakers: their openings are published to peers."""

    def __init__(
        self,
        redis: GuardedRedis,
        breakers: Callable[[], Mapping[str, Breaker]],
        *,
        interval_s: float = 1.0,
    ) -> None:
        self._redis = redis
        self._breakers = breakers
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, float] = {}  # target -> opened_at (epoch seconds) to publish
        self._seen: dict[str, str] = {}  # target -> the last peer open event adopted
        self._adopting: set[str] = set()
        self._wake = asyncio.Event()

    def state_changed(self, target: str, state: str, *, changed: bool) -> None:
        if changed and state == OPEN:
            self.opened(target)

    def forgotten(self, target: str) -> None:
        pass

    def opened(self, target: str) -> None:
        """Called (in the event loop) when a local breaker opens: publish it soon."""
        if target in self._adopting:
            return  # opened because a peer did: publishing it back would keep peers re-opening
        self._pending[target] = time.time()
        self._wake.set()

    async def start(self) -> None:
        await self._redis.start()
        self._task = asyncio.create_task(self._run(), name="breaker-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._redis.close()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._publish()
                await self._adopt()
            except RedisDown as exc:
                log.debug("breaker sync skipped", extra={"error": str(exc)})

    async def _publish(self) -> None:
        pending, self._pending = self._pending, {}
        breakers = self._breakers()
        for target, opened_at in pending.items():
            breaker = breakers.get(target)
            if breaker is None:
                continue
            ttl_ms = int(breaker.reset_timeout_s * 1000)
            value = str(opened_at)
            self._seen[target] = value  # our own event: never adopt it back
            await self._redis.call(partial(self._redis.client.set, KEY_PREFIX + target, value, px=ttl_ms))

    async def _adopt(self) -> None:
        """Open, locally, every breaker a peer opened within its reset timeout."""
        breakers = self._breakers()
        if not breakers:
            return
        targets = list(breakers)
        values = await self._redis.call(partial(self._redis.client.mget, [KEY_PREFIX + t for t in targets]))
        for target, raw in zip(targets, values, strict=True):
            if raw is None:
                continue
            event = raw.decode() if isinstance(raw, bytes) else str(raw)
            if self._seen.get(target) == event:
                continue  # each peer open event is adopted once, so recovery here sticks
            self._seen[target] = event
            breaker = breakers[target]
            if breaker.state == "closed":
                log.warning("breaker opened by a peer", extra={"target": target})
                self._adopting.add(target)
                try:
                    breaker.trip()
                finally:
                    self._adopting.discard(target)
