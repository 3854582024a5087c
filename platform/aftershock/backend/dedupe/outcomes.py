"""What `Dedupe.begin` answers: claim the generation, join a live one, replay a finished one, or
bypass dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.utils import suppress_instrumentation

from aftershock.backend.dedupe.config import OwnerLost
from aftershock.backend.dedupe.store import NO_IDENTITY, READ_COUNT, DedupeStore, Identity, Keys, parse_entry
from aftershock.clock import Clock
from aftershock.redis_guard import RedisDown
from aftershock.v1 import generation_pb2 as pb

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bypass:
    """Serve without dedupe: Redis is unreachable or its breaker is open."""

    reason: str
    identity: Identity = NO_IDENTITY


class Replay:
    """A finished result, kept for result_ttl_s."""

    def __init__(self, store: DedupeStore, keys: Keys, owner: str, identity: Identity) -> None:
        self.identity = identity
        self._store = store
        self._stream = keys.stream(owner)

    async def messages(self) -> AsyncIterator[pb.GenerateResponse]:
        start = "-"
        while True:
            entries: Any = await self._store.read_range(self._stream, start)
            for entry_id, fields in entries or ():
                msg = parse_entry(fields)
                if msg is None:
                    return
                yield msg
                start = "(" + entry_id.decode()
            if not entries or len(entries) < READ_COUNT:
                # Expired between begin and now (the TTLs of meta and stream are set together).
                raise OwnerLost("The stored result expired while it was being read.")


class Join:
    """A duplicate of a live generation: follow its stream from the start."""

    def __init__(self, store: DedupeStore, keys: Keys, owner: str, identity: Identity) -> None:
        self.identity = identity
        self._store = store
        self._keys = keys
        self._owner = owner

    async def messages(self) -> AsyncIterator[pb.GenerateResponse]:
        stream = self._keys.stream(self._owner)
        last = "0-0"
        while True:
            resp: Any = await self._store.read_blocking(stream, last)
            if not resp:
                # Nothing new within a poll: is the owner still there?
                status = await self._store.status(self._keys, self._owner)
                if status == b"lost":
                    raise OwnerLost("The request this one joined lost its owner before it finished.")
                continue  # live, or done (the end entry is then already there to read)
            for _name, entries in resp:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    msg = parse_entry(fields)
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

    def __init__(
        self,
        store: DedupeStore,
        keys: Keys,
        token: str,
        *,
        identity: Identity,
        taken_over: bool,
        clock: Clock,
        on_closed: Callable[[Claim], None] = lambda _claim: None,
    ) -> None:
        self.taken_over = taken_over
        # A takeover keeps the first request's identity: it is what every duplicate answers with.
        self.identity = identity
        self._store = store
        self._config = store.config
        self._clock = clock
        self._on_closed = on_closed
        self._keys = keys
        self._token = token
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
        elif len(self._pending) >= self._config.max_pending:
            # wait(), not await: our cancellation must not cancel the flush joiners depend on.
            await asyncio.wait({self._flusher})

    async def finish(self, last: pb.GenerateResponse | None = None) -> bool:
        """Store the result for result_ttl_s, `last` (the message with the finish reason) in the same
        call. False when it could not be stored (nothing to undo)."""
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
        if last is not None:
            batch.append(last.SerializeToString())
        try:
            ok = await self._store.finish(self._keys, self._token, self._flushed + 1, batch)
        except RedisDown:
            # The lease lapses by itself and a duplicate then generates again.
            return False
        finally:
            self._on_closed(self)
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
            async with closing(source):
                async for msg in source:
                    if msg.finish_reason:
                        # The result is complete: store it before handing over the last message, since
                        # a caller may close us right after receiving it (or drop before it arrives).
                        # The last message goes with it: one Redis call fewer (a non-streamed request
                        # makes two in all: begin and finish).
                        finished = True
                        await asyncio.shield(self.finish(msg))
                    else:
                        await self.publish(msg)
                    yield msg
            finished = True
        finally:
            # Shielded: a cancelled relay still releases the lease, or joiners would wait for it to lapse.
            # Both are no-ops once the claim is closed (finish() may already have run above).
            await asyncio.shield(self.finish() if finished else self.abandon())

    async def _release(self) -> None:
        try:
            await self._store.abandon(self._keys, self._token)
        except RedisDown:
            pass  # the lease lapses by itself
        finally:
            self._on_closed(self)

    def _stop_renewing(self) -> None:
        # A renewer inside a Redis call is left to end by itself right after it: cancelled there,
        # pybreaker would count the call as a success.
        self._renewing = False
        if self._renewer is not None and not self._renew_in_call:
            self._renewer.cancel()
        self._renewer = None

    def halt(self) -> None:
        """Stop background work without touching Redis (Dedupe.close: the lease then lapses)."""
        self._closed = True
        self._stop_renewing()
        if self._flusher is not None:
            self._flusher.cancel()

    async def _flush_loop(self) -> None:
        cfg = self._config
        while self._pending and self.healthy:
            if self._flushed and cfg.publish_interval_ms:
                self._coalescing = True
                try:
                    await self._clock.sleep(cfg.publish_interval_ms / 1000)
                finally:
                    self._coalescing = False
            batch, self._pending = self._pending, []
            try:
                # Background batches, not the request's own work: a span each (every 50 ms of a
                # stream) would crowd its trace and cost ~100 µs of CPU apiece to make and export.
                with suppress_instrumentation():
                    ok = await self._store.publish(self._keys, self._token, self._flushed + 1, batch)
            except RedisDown:
                self._fail(broken=True)
                return
            if not ok:
                self._fail(broken=False)
                return
            self._flushed += len(batch)

    async def _renew_loop(self) -> None:
        while True:
            await self._clock.sleep(self._config.renew_every_ms / 1000)
            self._renew_in_call = True
            try:
                with suppress_instrumentation():  # background, as the publishes are
                    ok = await self._store.renew(self._keys, self._token)
            except RedisDown:
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
async def closing(source: AsyncIterator[Any]) -> AsyncGenerator[None, None]:
    """Close an async generator source on the way out, so its downstream call is cancelled now."""
    try:
        yield
    finally:
        if isinstance(source, AsyncGenerator):
            await source.aclose()
