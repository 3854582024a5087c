"""Exactly-once generation per idempotency key, on Redis.

`await dedupe.begin(key, fingerprint)` answers one of:

- `Claim`: this request generates. It holds a lease (`SET NX PX` with an owner token, renewed in the
  background by a compare-and-renew script), publishes every message it relays to a Redis Stream,
  and ends with `finish()` (the result is kept for `result_ttl_s`) or `abandon()` (everything is
  deleted so the next request generates again).
- `Join`: a duplicate while the first is live; `messages()` follows the same stream from its start
  and raises `OwnerLost` when the owner dies or gives up, so the caller can `begin` again.
- `Replay`: the finished result, within its TTL.
- `Bypass`: Redis is unreachable or its breaker is open; the request is served without dedupe.

A different fingerprint under a known key raises `errors.AlreadyExists`. `Dedupe.serve()` wraps all
of it around a relay (an async generator factory), which is what the servicer needs.

Layout, per key (hashed, so a client's key cannot reach outside its slot or grow Redis keys):
  {p}{h}:meta     hash: fp, state (running|done), owner token
  {p}{h}:lease    string: owner token, PX lease_ms
  {p}{h}:s:<tok>  stream of one generation: entries 0-1, 0-2, ... with field m (a serialized
                  GenerateResponse), then one `end` (finished) or `abandon` entry.
A stream per owner token means a joiner of a dead owner never mixes two generations. Entry IDs are
sequence numbers so every write script is idempotent: redis-py may resend a command once after a
connection error (a stale pooled connection after a Redis restart), and a resent write must not
duplicate a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from aftershock import errors
from aftershock.backend.dedupe.config import (
    BREAKER_TARGET,
    REDIS_CLIENT,
    DedupeConfig,
    OwnerLost,
    T,
    _RedisDown,
)
from aftershock.backend.dedupe.outcomes import Bypass, Claim, Join, Outcome, Replay, _closing
from aftershock.backend.dedupe.scripts import (
    _ABANDON,
    _BEGIN,
    _FINISH,
    _PUBLISH,
    _RENEW,
    _STATUS,
    _is_redis_failure,
    _Keys,
)
from aftershock.backend.resume import skip_delivered, text_length
from aftershock.breaker import Breaker
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.metrics import BackendMetrics
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)


def collapse(messages: list[pb.GenerateResponse]) -> pb.GenerateResponse:
    """One message from a streamed sequence: a non-streaming caller may join a streaming owner."""
    if len(messages) == 1:
        return messages[0]
    out = pb.GenerateResponse()
    if messages:
        out.CopyFrom(messages[-1])
        del out.tokens[:]
        for m in messages:
            out.tokens.extend(m.tokens)
        out.prompt_tokens = max(m.prompt_tokens for m in messages)
    return out


# --- the service object ------------------------------------------------------------------------


class Dedupe:
    def __init__(self, config: DedupeConfig, metrics: BackendMetrics, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self._metrics = metrics
        self.breaker = Breaker(
            BREAKER_TARGET,
            fail_max=config.breaker_fail_max,
            reset_timeout_s=config.breaker_reset_timeout_s,
            half_open_max_calls=config.breaker_half_open_max_calls,
            is_failure=_is_redis_failure,
            metrics=metrics,
        )
        common: dict[str, Any] = {
            "socket_connect_timeout": config.socket_connect_timeout_s,
            # One immediate resend on a connection error only: it replaces a stale pooled connection
            # after a Redis restart (our writes are idempotent). Timeouts are not resent: the breaker
            # decides what happens next, not a backoff inside a request.
            "retry": Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            # RESP2: one reply shape on every Redis version and proxy we may sit behind.
            "protocol": 2,
        }
        self._client: aioredis.Redis = aioredis.Redis.from_url(
            config.redis_url, socket_timeout=config.socket_timeout_s, **common
        )
        # Joiners block in XREAD for join_poll_ms: their own pool, with a read timeout above that.
        self._blocking: aioredis.Redis = aioredis.Redis.from_url(
            config.redis_url, socket_timeout=config.join_poll_ms / 1000 + config.socket_timeout_s, **common
        )
        self._begin = self._client.register_script(_BEGIN)
        self._renew = self._client.register_script(_RENEW)
        self._publish = self._client.register_script(_PUBLISH)
        self._finish = self._client.register_script(_FINISH)
        self._abandon = self._client.register_script(_ABANDON)
        self._status = self._client.register_script(_STATUS)
        self._claims: set[Claim] = set()
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        self._outcomes = {
            name: metrics.dedupe_requests_total.labels(name)
            for name in ("claimed", "joined", "replayed", "taken_over", "conflict", "bypassed")
        }

    def _keys(self, key: str) -> _Keys:
        # Hashed: bounded length, and the hash tag keeps one key's entries in one cluster slot.
        h = hashlib.sha256(key.encode()).hexdigest()[:32]
        base = f"{self.config.key_prefix}{{{h}}}:"
        return _Keys(meta=base + "meta", lease=base + "lease", stream_prefix=base + "s:")

    async def begin(self, key: str, fingerprint: str) -> Outcome:
        """Claim, join or replay the generation for `key`; Bypass when Redis cannot be used.

        Raises errors.AlreadyExists when `key` is known with a different fingerprint.
        """
        if not self.breaker.admits():
            return self._bypass("breaker_open")
        keys = self._keys(key)
        token = secrets.token_hex(16)
        args: list[str | int] = [
            fingerprint,
            token,
            self.config.lease_ms,
            self.config.running_ttl_ms,
            keys.stream_prefix,
        ]
        try:
            res = await self._call(lambda: self._begin(keys=[keys.meta, keys.lease], args=args))
        except _RedisDown:
            return self._bypass("redis_unavailable")
        outcome, owner = res[0].decode(), res[1].decode()
        self._count(outcome)
        if outcome == "conflict":
            raise errors.AlreadyExists(
                "Idempotency-Key reused with a different request body", param="idempotency_key"
            )
        if outcome == "joined":
            return Join(self, keys, owner)
        if outcome == "replayed":
            return Replay(self, keys, owner)
        claim = Claim(self, keys, token, taken_over=outcome == "taken_over")
        self._claims.add(claim)
        return claim

    async def serve(
        self,
        key: str,
        fingerprint: str,
        generate: Callable[[], AsyncIterator[pb.GenerateResponse]],
        *,
        stream: bool = True,
        resumable: bool = False,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Everything a relay needs: yields the messages for this request, generating at most once.

        `generate()` starts the real relay; it is called when this request claims the key, when
        Redis is unavailable (fail open), or as a last resort after max_attempts lost owners. A
        joiner whose owner is lost starts over; once it has delivered text, only a `resumable`
        (deterministic) request may, skipping what was delivered; otherwise errors.Unavailable.
        `stream=False` yields a single message even when joining a streaming owner.
        """
        delivered = 0  # characters yielded to the caller
        attempt = 0
        while True:
            attempt += 1
            source: AsyncIterator[pb.GenerateResponse]
            if attempt > self.config.max_attempts:
                # Owners keep dying under us: serve without dedupe rather than fail the request.
                self._count("bypassed")
                source = generate()
            else:
                outcome = await self.begin(key, fingerprint)
                if isinstance(outcome, Claim):
                    source = outcome.relay(generate())
                elif isinstance(outcome, Bypass):
                    source = generate()
                else:
                    source = outcome.messages()
            skip = delivered
            collected: list[pb.GenerateResponse] = []
            try:
                async with _closing(source):
                    async for msg in source:
                        if not stream:
                            collected.append(msg)
                            continue
                        if skip:
                            kept, skip = skip_delivered(msg, skip)
                            if kept is None:
                                continue
                            msg = kept
                        delivered += text_length(msg)
                        yield msg
                if not stream:
                    yield collapse(collected)
                return
            except OwnerLost:
                if attempt > self.config.max_attempts:
                    raise
                if delivered and not resumable:
                    raise errors.Unavailable(
                        "The generation this request joined was lost mid-stream.", retry_after_s=1.0
                    ) from None
                log.info("dedupe owner lost, starting over", extra={"delivered_chars": delivered})

    async def start(self) -> None:
        """Probe Redis now and every probe_every_s (redis_up stays current; the breaker recovers)."""
        await self._probe()
        if self.config.probe_every_s > 0 and self._prober is None:
            self._prober = asyncio.create_task(self._probe_loop(), name="dedupe-probe")

    async def close(self) -> None:
        """Stop background work and close connections. Live claims are not released: their leases
        lapse and duplicates take over, exactly as if this process had died (call it after draining)."""
        if self._closed:
            return
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
            self._prober = None
        for claim in list(self._claims):
            claim._halt()
        self._claims.clear()
        await self._client.aclose()
        await self._blocking.aclose()

    async def _probe_loop(self) -> None:
        while True:
            await self.clock.sleep(self.config.probe_every_s)
            await self._probe()

    async def _probe(self) -> None:
        if not self.breaker.admits():
            return
        with contextlib.suppress(_RedisDown):
            await self._call(self._client.ping)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        """One Redis call through the breaker; _RedisDown when it fails or is refused."""
        try:
            with self.breaker.calling():
                result = await op()
        except errors.Unavailable as exc:  # the breaker refused without calling
            raise _RedisDown(str(exc)) from exc
        except Exception as exc:
            if not _is_redis_failure(exc):
                raise
            self._metrics.redis_up.labels(REDIS_CLIENT).set(0)
            log.debug("redis call failed", extra={"error": repr(exc)})
            raise _RedisDown(repr(exc)) from exc
        self._metrics.redis_up.labels(REDIS_CLIENT).set(1)
        return result

    async def _call_or_lost(self, op: Callable[[], Awaitable[T]]) -> T:
        # A reader that cannot reach Redis cannot follow the owner: start over (likely as Bypass).
        try:
            return await self._call(op)
        except _RedisDown as exc:
            raise OwnerLost("Redis became unavailable while following a deduplicated request.") from exc

    def _bypass(self, reason: str) -> Bypass:
        self._count("bypassed")
        return Bypass(reason)

    def _count(self, outcome: str) -> None:
        metric = self._outcomes.get(outcome)
        if metric is not None:
            metric.inc()
        trace.get_current_span().add_event("dedupe", {"aftershock.dedupe.outcome": outcome})

