"""Dedupe's Redis: the guarded clients, the key layout and one method per script or read.

Both the service (begin) and the outcomes (claim, join, replay) work through this, so neither needs
the other's insides. Every call goes through the guarded Redis: RedisDown when Redis failed or its
breaker refused, and the `_or_lost` reads turn that into OwnerLost for a reader that can then no
longer follow its owner.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from aftershock.backend.dedupe import scripts
from aftershock.backend.dedupe.config import DedupeConfig, OwnerLost
from aftershock.breaker import BreakerListener
from aftershock.clock import Clock
from aftershock.redis_guard import GuardedRedis, RedisDown
from aftershock.v1 import generation_pb2 as pb

T = TypeVar("T")

REDIS_CLIENT = "dedupe"  # the `client` label of aftershock_redis_up
READ_COUNT = 512  # stream entries per XREAD/XRANGE page


@dataclass(frozen=True)
class Keys:
    meta: str
    lease: str
    stream_prefix: str

    def stream(self, token: str) -> str:
        return self.stream_prefix + token


@dataclass(frozen=True)
class Identity:
    """The OpenAI response id and created time of the first request for a key."""

    completion_id: str = ""
    created: int = 0


NO_IDENTITY = Identity()  # a request whose edge chose no id (older edges, direct gRPC callers)


@dataclass(frozen=True)
class Begun:
    outcome: str  # claimed, taken_over, joined, replayed or conflict
    owner: str
    identity: Identity


def parse_entry(fields: dict[bytes, bytes]) -> pb.GenerateResponse | None:
    """The message in a stream entry; None for the `end` marker; OwnerLost for `abandon`."""
    data = fields.get(b"m")
    if data is not None:
        return pb.GenerateResponse.FromString(data)
    if b"abandon" in fields:
        raise OwnerLost("The request this one joined was abandoned.")
    return None


class DedupeStore:
    def __init__(
        self,
        config: DedupeConfig,
        *,
        clock: Clock,
        on_up: Callable[[bool], None] | None = None,
        breaker_listeners: Sequence[BreakerListener] = (),
    ) -> None:
        self.config = config
        self.redis = GuardedRedis(
            config.redis(), name=REDIS_CLIENT, on_up=on_up, breaker_listeners=breaker_listeners, clock=clock
        )
        client = self.redis.client
        # Joiners block in XREAD for join_poll_ms: their own pool, with a read timeout above that.
        self._blocking = self.redis.extra_client(config.join_poll_ms / 1000 + config.socket_timeout_s)
        self._begin = client.register_script(scripts.BEGIN)
        self._renew = client.register_script(scripts.RENEW)
        self._publish = client.register_script(scripts.PUBLISH)
        self._finish = client.register_script(scripts.FINISH)
        self._abandon = client.register_script(scripts.ABANDON)
        self._status = client.register_script(scripts.STATUS)

    def keys(self, key: str) -> Keys:
        # Hashed: bounded length, and the hash tag keeps one key's entries in one cluster slot.
        h = hashlib.sha256(key.encode()).hexdigest()[:32]
        base = f"{self.config.key_prefix}{{{h}}}:"
        return Keys(meta=base + "meta", lease=base + "lease", stream_prefix=base + "s:")

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        return await self.redis.call(op)

    async def call_or_lost(self, op: Callable[[], Awaitable[T]]) -> T:
        # A reader that cannot reach Redis cannot follow the owner: start over (likely as Bypass).
        try:
            return await self.redis.call(op)
        except RedisDown as exc:
            raise OwnerLost("Redis became unavailable while following a deduplicated request.") from exc

    # --- writes (RedisDown when Redis is unusable) ---

    async def begin(self, keys: Keys, fingerprint: str, token: str, identity: Identity) -> Begun:
        cfg = self.config
        args: list[str | int] = [
            fingerprint,
            token,
            cfg.lease_ms,
            cfg.running_ttl_ms,
            keys.stream_prefix,
            identity.completion_id,
            identity.created,
        ]
        res = await self.call(partial(self._begin, keys=[keys.meta, keys.lease], args=args))
        outcome, owner, cid, created = (v.decode() if isinstance(v, bytes) else str(v) for v in res)
        return Begun(outcome, owner, Identity(cid, int(created) if created.lstrip("-").isdigit() else 0))

    async def renew(self, keys: Keys, token: str) -> Any:
        cfg = self.config
        args: list[str | int] = [token, cfg.lease_ms, cfg.running_ttl_ms]
        return await self.call(
            partial(self._renew, keys=[keys.lease, keys.meta, keys.stream(token)], args=args)
        )

    async def publish(self, keys: Keys, token: str, first: int, batch: list[bytes]) -> Any:
        cfg = self.config
        args: list[bytes | str | int] = [token, cfg.lease_ms, cfg.running_ttl_ms, first, *batch]
        return await self.call(
            partial(self._publish, keys=[keys.lease, keys.meta, keys.stream(token)], args=args)
        )

    async def finish(self, keys: Keys, token: str, first: int, batch: list[bytes]) -> Any:
        args: list[bytes | str | int] = [token, self.config.result_ttl_ms, first, *batch]
        return await self.call(
            partial(self._finish, keys=[keys.lease, keys.meta, keys.stream(token)], args=args)
        )

    async def abandon(self, keys: Keys, token: str) -> Any:
        args: list[str | int] = [token, self.config.lease_ms]
        return await self.call(
            partial(self._abandon, keys=[keys.lease, keys.meta, keys.stream(token)], args=args)
        )

    # --- reads (OwnerLost when Redis is unusable) ---

    async def status(self, keys: Keys, owner: str) -> Any:
        return await self.call_or_lost(partial(self._status, keys=[keys.lease, keys.meta], args=[owner]))

    async def read_range(self, stream: str, start: str) -> Any:
        return await self.call_or_lost(
            partial(self.redis.client.xrange, stream, min=start, max="+", count=READ_COUNT)
        )

    async def read_blocking(self, stream: str, last: str) -> Any:
        return await self.call_or_lost(
            partial(self._blocking.xread, {stream: last}, count=READ_COUNT, block=self.config.join_poll_ms)
        )
