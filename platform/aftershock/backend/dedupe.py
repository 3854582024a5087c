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
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from aftershock import errors
from aftershock.breaker import Breaker
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.metrics import BackendMetrics
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)

T = TypeVar("T")

BREAKER_TARGET = "redis"
REDIS_CLIENT = "dedupe"  # the `client` label of aftershock_redis_up
_READ_COUNT = 512  # stream entries per XREAD/XRANGE page


@dataclass(frozen=True)
class DedupeConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "aftershock:dedupe:"
    # The owner's lease; a duplicate takes over this long after the owner's last renewal.
    lease_ms: int = 10_000
    renew_every_ms: int = 3_000
    # How long a finished result is replayed to a client that retries.
    result_ttl_s: float = 300.0
    # A joiner waits this long in XREAD BLOCK before checking that the owner is still alive.
    join_poll_ms: int = 1_000
    # Short, so that an unreachable Redis costs a request little before the breaker opens.
    socket_timeout_s: float = 0.25
    socket_connect_timeout_s: float = 0.25
    breaker_fail_max: int = 5
    breaker_reset_timeout_s: float = 5.0
    breaker_half_open_max_calls: int = 1
    # A background PING keeps redis_up current and closes the breaker without traffic; 0 disables.
    probe_every_s: float = 5.0
    # Unflushed messages after which publish() waits for Redis (backpressure, not per message).
    max_pending: int = 1024
    # After the first message, publishes are batched over this long: a paced stream then costs one
    # Redis call per interval, not per token. Joiners lag the owner by at most this much; the
    # owner's own stream never waits for it, and finish() flushes at once.
    publish_interval_ms: int = 50
    # Times serve() starts over after OwnerLost before it generates without dedupe.
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.lease_ms <= 0 or not 0 < self.renew_every_ms < self.lease_ms:
            raise ValueError("need 0 < renew_every_ms < lease_ms")
        if self.result_ttl_s <= 0 or self.join_poll_ms <= 0:
            raise ValueError("result_ttl_s and join_poll_ms must be positive")
        if self.socket_timeout_s <= 0 or self.socket_connect_timeout_s <= 0:
            raise ValueError("Redis timeouts must be positive")
        if self.breaker_fail_max < 1 or self.breaker_reset_timeout_s <= 0:
            raise ValueError("breaker_fail_max must be >= 1 and breaker_reset_timeout_s > 0")
        if self.max_pending < 1 or self.max_attempts < 1:
            raise ValueError("max_pending and max_attempts must be >= 1")

    @property
    def result_ttl_ms(self) -> int:
        return max(1, round(self.result_ttl_s * 1000))

    @property
    def running_ttl_ms(self) -> int:
        # Metadata of a running generation outlives its lease, so a duplicate arriving after the
        # owner died is counted as a takeover; it still expires if nobody comes.
        return self.lease_ms + self.result_ttl_ms


class OwnerLost(errors.Unavailable):
    """The generation a Join followed ended without a result: call `begin` again.

    An Unavailable, so that if it escapes unhandled the client sees a retryable 503.
    """


class _RedisDown(Exception):
    """A Redis call failed or its breaker refused it."""


# --- request hashing --------------------------------------------------------------------------


def fingerprint(request: pb.GenerateRequest) -> str:
    """A hash of what determines the output: model, input and sampling.

    Excludes the request id, the stream flag and stream_interval (they change how the same tokens
    are framed, not which), and the idempotency key. Built from the message minus those fields, so
    a field added to the contract later is covered without touching this.
    """
    content = pb.GenerateRequest()
    content.CopyFrom(request)
    content.ClearField("request_id")
    content.ClearField("stream")
    content.ClearField("stream_interval")
    content.ClearField("idempotency_key")
    return hashlib.sha256(b"aftershock.fp.v1\0" + content.SerializeToString(deterministic=True)).hexdigest()


def content_key(request: pb.GenerateRequest) -> str:
    """A dedupe key for a deterministic request without an Idempotency-Key (when so configured)."""
    return "content:" + fingerprint(request)


# --- Lua ---------------------------------------------------------------------------------------

# Last sequence number written to a stream (entry IDs are 0-<seq>); 0 when empty.
_LAST_SEQ = """
local function last_seq(stream)
  local r = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #r == 0 then return 0 end
  return tonumber(string.match(r[1][1], '^0%-(%d+)$')) or 0
end
"""

# KEYS: meta, lease. ARGV: fp, token, lease_ms, running_ttl_ms, stream key prefix.
_BEGIN = """
local meta, lease = KEYS[1], KEYS[2]
local fp, token = ARGV[1], ARGV[2]
local holder = redis.call('GET', lease)
if holder == token then return {'claimed', token} end  -- a resent begin that had already won
local stored = redis.call('HMGET', meta, 'fp', 'state', 'owner')
local outcome = 'claimed'
if stored[1] then
  if stored[1] ~= fp then return {'conflict', ''} end
  if stored[2] == 'done' then return {'replayed', stored[3]} end
  if holder then return {'joined', holder} end
  -- running, but the lease lapsed: the owner died; its partial stream goes
  if stored[3] then redis.call('DEL', ARGV[5] .. stored[3]) end
  outcome = 'taken_over'
elseif holder then
  return {'joined', holder}
end
redis.call('SET', lease, token, 'NX', 'PX', ARGV[3])
redis.call('DEL', meta)
redis.call('HSET', meta, 'fp', fp, 'state', 'running', 'owner', token)
redis.call('PEXPIRE', meta, ARGV[4])
return {outcome, token}
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms. Only the holder renews.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: lease, meta, stream. ARGV: token, lease_ms, running_ttl_ms, first seq, messages...
_PUBLISH = (
    _LAST_SEQ
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = last_seq(KEYS[3])
local seq = tonumber(ARGV[4])
for i = 5, #ARGV do
  if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'm', ARGV[i]) end
  seq = seq + 1
end
-- publishing is proof of life: it renews like the renewer does
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
"""
)

# KEYS: lease, meta, stream. ARGV: token, result_ttl_ms, first seq, messages...
_FINISH = (
    _LAST_SEQ
    + """
local m = redis.call('HMGET', KEYS[2], 'owner', 'state')
if m[1] == ARGV[1] and m[2] == 'done' then return 1 end  -- a resent finish
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local last = last_seq(KEYS[3])
local seq = tonumber(ARGV[3])
for i = 4, #ARGV do
  if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'm', ARGV[i]) end
  seq = seq + 1
end
if seq > last then redis.call('XADD', KEYS[3], '0-' .. seq, 'end', '1') end
redis.call('HSET', KEYS[2], 'state', 'done')
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""
)

# KEYS: lease, meta, stream. ARGV: token, marker_ttl_ms. The marker wakes blocked joiners now.
_ABANDON = (
    _LAST_SEQ
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('XADD', KEYS[3], '0-' .. (last_seq(KEYS[3]) + 1), 'abandon', '1')
redis.call('PEXPIRE', KEYS[3], ARGV[2])
return 1
"""
)

# KEYS: lease, meta. ARGV: token. Is the generation a joiner follows live, done or lost?
_STATUS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return 'live' end
local m = redis.call('HMGET', KEYS[2], 'owner', 'state')
if m[1] == ARGV[1] and m[2] == 'done' then return 'done' end
return 'lost'
"""


@dataclass(frozen=True)
class _Keys:
    meta: str
    lease: str
    stream_prefix: str

    def stream(self, token: str) -> str:
        return self.stream_prefix + token


def _is_redis_failure(exc: BaseException) -> bool:
    # Only Redis being unreachable or failing counts; a cancelled call or our own bug does not.
    return isinstance(exc, (RedisError, OSError, asyncio.TimeoutError))


def _parse_entry(fields: dict[bytes, bytes]) -> pb.GenerateResponse | None:
    """The message in a stream entry; None for the `end` marker; OwnerLost for `abandon`."""
    data = fields.get(b"m")
    if data is not None:
        return pb.GenerateResponse.FromString(data)
    if b"abandon" in fields:
        raise OwnerLost("The request this one joined was abandoned.")
    return None


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bypass:
    """Serve without dedupe: Redis is unreachable or its breaker is open."""

    reason: str


class Replay:
    """A finished result, kept for result_ttl_s."""

    def __init__(self, dedupe: Dedupe, keys: _Keys, owner: str) -> None:
        self._d = dedupe
        self._stream = keys.stream(owner)

    async def messages(self) -> AsyncIterator[pb.GenerateResponse]:
        start = "-"
        while True:
            entries: Any = await self._d._call_or_lost(
                partial(self._d._client.xrange, self._stream, min=start, max="+", count=_READ_COUNT)
            )
            for entry_id, fields in entries or ():
                msg = _parse_entry(fields)
                if msg is None:
                    return
                yield msg
                start = "(" + entry_id.decode()
            if not entries or len(entries) < _READ_COUNT:
                # Expired between begin and now (the TTLs of meta and stream are set together).
                raise OwnerLost("The stored result expired while it was being read.")


class Join:
    """A duplicate of a live generation: follow its stream from the start."""

    def __init__(self, dedupe: Dedupe, keys: _Keys, owner: str) -> None:
        self._d = dedupe
        self._keys = keys
        self._owner = owner

    async def messages(self) -> AsyncIterator[pb.GenerateResponse]:
        d = self._d
        stream = self._keys.stream(self._owner)
        last = "0-0"
        while True:
            resp: Any = await d._call_or_lost(
                partial(d._blocking.xread, {stream: last}, count=_READ_COUNT, block=d.config.join_poll_ms)
            )
            if not resp:
                # Nothing new within a poll: is the owner still there?
                status = await d._call_or_lost(
                    lambda: d._status(keys=[self._keys.lease, self._keys.meta], args=[self._owner])
                )
                if status == b"lost":
                    raise OwnerLost("The request this one joined lost its owner before it finished.")
                continue  # live, or done (the end entry is then already there to read)
            for _name, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    msg = _parse_entry(fields)
                    if msg is None:
                        return
                    yield msg
                    if msg.finish_reason:
                        return


class Claim:
    """This request owns the generation: publish what it relays, then finish or abandon.

    `publish` does not wait for Redis: messages are queued and a single background flush sends
    whatever is queued in one script call, so Redis round trips per generation are bounded by
    Redis latency, not by the token rate, and never sit on the relay's hot path.
    """

    def __init__(self, dedupe: Dedupe, keys: _Keys, token: str, *, taken_over: bool) -> None:
        self.taken_over = taken_over
        self._d = dedupe
        self._keys = keys
        self._token = token
        self._stream = keys.stream(token)
        self._pending: list[bytes] = []
        self._flushed = 0  # messages sent to the stream (their seqs are 1.._flushed)
        self._closed = False
        self._lost = False  # the lease went to someone else
        self._broken = False  # a publish failed: the stream has a gap and must not be kept
        self._flusher: asyncio.Task[None] | None = None
        self._coalescing = False  # the flusher is waiting for more messages, not talking to Redis
        self._renewing = True
        self._renew_in_call = False
        self._renewer: asyncio.Task[None] | None = asyncio.create_task(
            self._renew_loop(), name="dedupe-renew"
        )

    @property
    def healthy(self) -> bool:
        """False once this claim can no longer store a complete result (its output is unaffected)."""
        return not (self._lost or self._broken)

    async def publish(self, msg: pb.GenerateResponse) -> None:
        """Queue one relayed message for joiners; returns at once unless max_pending are queued."""
        if self._closed or not self.healthy:
            return
        self._pending.append(msg.SerializeToString())
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="dedupe-publish")
        elif len(self._pending) >= self._d.config.max_pending:
            # wait(), not await: our cancellation must not cancel the flush joiners depend on.
            await asyncio.wait({self._flusher})

    async def finish(self) -> bool:
        """Store the result for result_ttl_s. False when it could not be stored (nothing to undo)."""
        if self._closed:
            return False
        self._closed = True
        self._stop_renewing()
        if self._flusher is not None:
            if self._coalescing:
                # Only waiting to batch: its messages go out with the final batch below.
                self._flusher.cancel()
            await asyncio.wait({self._flusher})  # keeps order: the last batch goes after it
        if not self.healthy:
            await self._release()
            return False
        batch, self._pending = self._pending, []
        keys = [self._keys.lease, self._keys.meta, self._stream]
        args: list[bytes | str | int] = [self._token, self._d.config.result_ttl_ms, self._flushed + 1, *batch]
        try:
            ok = await self._d._call(lambda: self._d._finish(keys=keys, args=args))
        except _RedisDown:
            # The lease lapses by itself and a duplicate then generates again.
            return False
        finally:
            self._d._claims.discard(self)
        return bool(ok)

    async def abandon(self) -> None:
        """Give up: release the lease and delete the partial result so the next request generates."""
        if self._closed:
            return
        self._closed = True
        self._stop_renewing()
        self._pending.clear()
        # An in-flight flush is left alone: it cannot land after the lease is gone (it checks it).
        await self._release()

    async def relay(self, source: AsyncIterator[pb.GenerateResponse]) -> AsyncIterator[pb.GenerateResponse]:
        """Yield `source` while publishing it; finish when it ends, abandon when it fails or is closed."""
        finished = False
        try:
            async with _closing(source):
                async for msg in source:
                    await self.publish(msg)
                    if msg.finish_reason:
                        # The result is complete: store it before handing over the last message, since
                        # a caller may close us right after receiving it (or drop before it arrives).
                        finished = True
                        await asyncio.shield(self.finish())
                    yield msg
            finished = True
        finally:
            # Shielded: a cancelled relay still releases the lease, or joiners would wait for it to lapse.
            # Both are no-ops once the claim is closed (finish() may already have run above).
            await asyncio.shield(self.finish() if finished else self.abandon())

    async def _release(self) -> None:
        try:
            await self._d._call(
                lambda: self._d._abandon(
                    keys=[self._keys.lease, self._keys.meta, self._stream],
                    args=[self._token, self._d.config.lease_ms],
                )
            )
        except _RedisDown:
            pass  # the lease lapses by itself
        finally:
            self._d._claims.discard(self)

    def _stop_renewing(self) -> None:
        # A renewer inside a Redis call is left to end by itself right after it: cancelled there,
        # pybreaker would count the call as a success.
        self._renewing = False
        if self._renewer is not None and not self._renew_in_call:
            self._renewer.cancel()
        self._renewer = None

    def _halt(self) -> None:
        """Stop background work without touching Redis (Dedupe.close: the lease then lapses)."""
        self._closed = True
        self._stop_renewing()
        if self._flusher is not None:
            self._flusher.cancel()

    async def _flush_loop(self) -> None:
        cfg = self._d.config
        keys = [self._keys.lease, self._keys.meta, self._stream]
        while self._pending and self.healthy:
            if self._flushed and cfg.publish_interval_ms:
                self._coalescing = True
                try:
                    await self._d.clock.sleep(cfg.publish_interval_ms / 1000)
                finally:
                    self._coalescing = False
            batch, self._pending = self._pending, []
            first = self._flushed + 1
            args: list[bytes | str | int] = [self._token, cfg.lease_ms, cfg.running_ttl_ms, first, *batch]
            try:
                ok = await self._d._call(partial(self._d._publish, keys=keys, args=args))
            except _RedisDown:
                self._fail(broken=True)
                return
            if not ok:
                self._fail(broken=False)
                return
            self._flushed += len(batch)

    async def _renew_loop(self) -> None:
        cfg = self._d.config
        keys = [self._keys.lease, self._keys.meta, self._stream]
        args: list[str | int] = [self._token, cfg.lease_ms, cfg.running_ttl_ms]
        while True:
            await self._d.clock.sleep(cfg.renew_every_ms / 1000)
            self._renew_in_call = True
            try:
                ok = await self._d._call(lambda: self._d._renew(keys=keys, args=args))
            except _RedisDown:
                ok = None  # try again next time; the lease may still be ours
            finally:
                self._renew_in_call = False
            if not self._renewing:
                return
            if ok == 0:
                self._fail(broken=False)
                return

    def _fail(self, *, broken: bool) -> None:
        if broken:
            # Joiners would miss a message: stop renewing so they see OwnerLost when the lease lapses.
            self._broken = True
            self._stop_renewing()
        else:
            self._lost = True
        self._pending.clear()
        log.warning("dedupe claim can no longer publish", extra={"broken": broken, "lost": not broken})


Outcome = Claim | Join | Replay | Bypass


@contextlib.asynccontextmanager
async def _closing(source: AsyncIterator[Any]) -> AsyncGenerator[None, None]:
    """Close an async generator source on the way out, so its downstream call is cancelled now."""
    try:
        yield
    finally:
        if isinstance(source, AsyncGenerator):
            await source.aclose()


def _chars(msg: pb.GenerateResponse) -> int:
    return sum(len(t) for t in msg.tokens)


def _skip_chars(msg: pb.GenerateResponse, skip: int) -> tuple[pb.GenerateResponse | None, int]:
    """Drop the first `skip` characters (already delivered before a restart); as the servicer does."""
    kept: list[str] = []
    pieces = list(msg.tokens)
    for i, piece in enumerate(pieces):
        if skip >= len(piece):
            skip -= len(piece)
            continue
        kept = [piece[skip:], *pieces[i + 1 :]]
        skip = 0
        break
    if not kept and not msg.finish_reason:
        return None, skip
    del msg.tokens[:]
    msg.tokens.extend(kept)
    return msg, skip


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
                            kept, skip = _skip_chars(msg, skip)
                            if kept is None:
                                continue
                            msg = kept
                        delivered += _chars(msg)
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


__all__ = [
    "Bypass",
    "Claim",
    "Dedupe",
    "DedupeConfig",
    "Join",
    "Outcome",
    "OwnerLost",
    "Replay",
    "collapse",
    "content_key",
    "fingerprint",
]
