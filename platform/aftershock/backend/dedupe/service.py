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

import logging
import secrets
from collections.abc import AsyncIterator, Callable

from opentelemetry import trace

from aftershock import errors
from aftershock.backend.breaker_metrics import BreakerMetrics
from aftershock.backend.dedupe.config import DedupeConfig, OwnerLost
from aftershock.backend.dedupe.outcomes import Bypass, Claim, Join, Outcome, Replay, closing
from aftershock.backend.dedupe.store import NO_IDENTITY, REDIS_CLIENT, DedupeStore, Identity
from aftershock.backend.resume import ResumeCursor
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.metrics import BackendMetrics
from aftershock.redis_guard import RedisDown
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


class Dedupe:
    def __init__(self, config: DedupeConfig, metrics: BackendMetrics, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.config = config
        self.clock = clock
        self._store = DedupeStore(
            config,
            clock=clock,
            on_up=lambda up: metrics.redis_up.labels(REDIS_CLIENT).set(1 if up else 0),
            breaker_listeners=[BreakerMetrics(metrics)],
        )
        self.breaker = self._store.redis.breaker
        self._claims: set[Claim] = set()
        self._closed = False
        self._outcomes = {
            name: metrics.dedupe_requests_total.labels(name)
            for name in ("claimed", "joined", "replayed", "taken_over", "conflict", "bypassed")
        }

    async def begin(self, key: str, fingerprint: str, identity: Identity = NO_IDENTITY) -> Outcome:
        """Claim, join or replay the generation for `key`; Bypass when Redis cannot be used.

        `identity` is this request's response id and created time; the outcome carries the first
        request's. Raises errors.AlreadyExists when `key` is known with a different fingerprint.
        """
        if not self.breaker.admits():
            return self._bypass("breaker_open", identity)
        keys = self._store.keys(key)
        token = secrets.token_hex(16)
        try:
            begun = await self._store.begin(keys, fingerprint, token, identity)
        except RedisDown:
            return self._bypass("redis_unavailable", identity)
        self._count(begun.outcome)
        if begun.outcome == "conflict":
            raise errors.AlreadyExists(
                "Idempotency-Key reused with a different request body", param="idempotency_key"
            )
        if begun.outcome == "joined":
            return Join(self._store, keys, begun.owner, begun.identity)
        if begun.outcome == "replayed":
            return Replay(self._store, keys, begun.owner, begun.identity)
        claim = Claim(
            self._store,
            keys,
            token,
            identity=begun.identity,
            taken_over=begun.outcome == "taken_over",
            clock=self.clock,
            on_closed=self._claims.discard,
        )
        self._claims.add(claim)
        return claim

    async def serve(
        self,
        key: str,
        fingerprint: str,
        generate: Callable[[], AsyncIterator[pb.GenerateResponse]],
        *,
        stream: bool = True,
        request: pb.GenerateRequest | None = None,
        identity: Identity = NO_IDENTITY,
    ) -> AsyncIterator[pb.GenerateResponse]:
        """Everything a relay needs: yields the messages for this request, generating at most once.

        `generate()` starts the real relay; it is called when this request claims the key, when
        Redis is unavailable (fail open), or as a last resort after max_attempts lost owners. A
        joiner whose owner is lost starts over; once it has delivered text, only when `request` is
        deterministic and what was delivered reproducible (ResumeCursor.may_resume), skipping what
        was delivered; otherwise errors.Unavailable. `stream=False` yields a single message even
        when joining a streaming owner. The first message carries the first request's id and
        created when they differ from `identity` (this request's), so every duplicate answers as
        the original did.
        """
        cursor = ResumeCursor()
        first = True
        attempt = 0
        while True:
            attempt += 1
            source: AsyncIterator[pb.GenerateResponse]
            answer_as = identity
            if attempt > self.config.max_attempts:
                # Owners keep dying under us: serve without dedupe rather than fail the request.
                self._count("bypassed")
                source = generate()
            else:
                outcome = await self.begin(key, fingerprint, identity)
                answer_as = outcome.identity
                if isinstance(outcome, Claim):
                    source = outcome.relay(generate())
                elif isinstance(outcome, Bypass):
                    source = generate()
                else:
                    source = outcome.messages()
            cursor.restart()
            collected: list[pb.GenerateResponse] = []
            try:
                async with closing(source):
                    async for msg in source:
                        if not stream:
                            collected.append(msg)
                            continue
                        kept = cursor.admit(msg)
                        if kept is None:
                            continue
                        if first:
                            first = False
                            _answer_as(kept, answer_as, identity)
                        yield kept
                if not stream:
                    out = collapse(collected)
                    _answer_as(out, answer_as, identity)
                    yield out
                return
            except OwnerLost:
                if attempt > self.config.max_attempts:
                    raise
                if cursor.delivered and (request is None or not cursor.may_resume(request)):
                    raise errors.Unavailable(
                        "The generation this request joined was lost mid-stream.", retry_after_s=1.0
                    ) from None
                log.info("dedupe owner lost, starting over", extra={"delivered_chars": cursor.delivered})

    async def start(self) -> None:
        """Probe Redis now and every probe_every_s (redis_up stays current; the breaker recovers)."""
        await self._store.redis.start()

    async def close(self) -> None:
        """Stop background work and close connections. Live claims are not released: their leases
        lapse and duplicates take over, exactly as if this process had died (call it after draining)."""
        if self._closed:
            return
        self._closed = True
        for claim in list(self._claims):
            claim.halt()
        self._claims.clear()
        await self._store.redis.close()

    def _bypass(self, reason: str, identity: Identity) -> Bypass:
        self._count("bypassed")
        return Bypass(reason, identity)

    def _count(self, outcome: str) -> None:
        metric = self._outcomes.get(outcome)
        if metric is not None:
            metric.inc()
        trace.get_current_span().add_event("dedupe", {"aftershock.dedupe.outcome": outcome})


def _answer_as(msg: pb.GenerateResponse, original: Identity, own: Identity) -> None:
    if original.completion_id and original != own:
        msg.completion_id = original.completion_id
        msg.created = original.created
