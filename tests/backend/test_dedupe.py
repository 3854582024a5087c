"""Dedupe against a real redis-server: claim/join/replay, conflicts, lost owners and identity."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aftershock import errors
from aftershock.backend.dedupe import (
    Claim,
    DedupeConfig,
    Identity,
    Join,
    OwnerLost,
    Replay,
    content_key,
    fingerprint,
)
from aftershock.v1 import generation_pb2 as pb

from tests.backend.dedupe_harness import LEASE_MS, Harness, drain, own, request, script, wire


def test_fingerprint_covers_content_only() -> None:
    a = request()
    b = request(stream=True, stream_interval=4, idempotency_key="k", completion_id="cmpl-x", created=5)
    assert a.request_id != b.request_id
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(request("other"))
    c = request()
    c.sampling.temperature = 0.5
    assert fingerprint(a) != fingerprint(c)
    chat = pb.GenerateRequest(model="sim-small", chat=pb.ChatMessages(messages=[pb.ChatMessage(role="user")]))
    assert fingerprint(chat) != fingerprint(pb.GenerateRequest(model="sim-small"))
    assert content_key(a) == content_key(b) != content_key(c)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        DedupeConfig(lease_ms=1000, renew_every_ms=1000)


async def test_fifty_concurrent_begins_generate_once(h: Harness) -> None:
    d = h.make()
    outcomes = await asyncio.gather(*(d.begin("k50", "fp") for _ in range(50)))
    claims = [o for o in outcomes if isinstance(o, Claim)]
    joins = [o for o in outcomes if isinstance(o, Join)]
    assert len(claims) == 1 and len(joins) == 49
    assert not claims[0].taken_over
    msgs = script(20)
    results = await asyncio.wait_for(
        asyncio.gather(own(claims[0], msgs), *(drain(j.messages()) for j in joins)), 10
    )
    expected = wire(msgs)
    assert all(wire(r) == expected for r in results)
    assert h.outcome("claimed") == 1 and h.outcome("joined") == 49


async def test_serve_generates_once_for_fifty_callers(h: Harness) -> None:
    d = h.make()
    calls = 0

    async def generate() -> AsyncIterator[pb.GenerateResponse]:
        nonlocal calls
        calls += 1
        for m in script(10):
            await asyncio.sleep(0.01)
            yield m

    async def call() -> list[bytes]:
        return wire(await drain(d.serve("serve50", "fp", generate)))

    results = await asyncio.wait_for(asyncio.gather(*(call() for _ in range(50))), 10)
    assert calls == 1
    assert all(r == wire(script(10)) for r in results)
    # A retry after the stream ended is replayed, not generated.
    assert wire(await drain(d.serve("serve50", "fp", generate))) == wire(script(10))
    assert calls == 1 and h.outcome("replayed") == 1


async def test_serve_non_streaming_joiner_gets_one_message(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("ns", "fp")
    assert isinstance(claim, Claim)
    msgs = script(5)

    async def never() -> AsyncIterator[pb.GenerateResponse]:
        raise AssertionError("a joiner must not generate")
        yield pb.GenerateResponse()

    joiner = asyncio.create_task(drain(d.serve("ns", "fp", never, stream=False)))
    await own(claim, msgs)
    (one,) = await asyncio.wait_for(joiner, 5)
    assert list(one.tokens) == [t for m in msgs for t in m.tokens]
    assert one.finish_reason == pb.FINISH_REASON_STOP and one.completion_tokens == msgs[-1].completion_tokens


async def test_replay_within_ttl_then_fresh_claim(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("r", "fp")
    assert isinstance(claim, Claim)
    msgs = await own(claim, script(4))
    replay = await d.begin("r", "fp")
    assert isinstance(replay, Replay)
    assert wire(await drain(replay.messages())) == wire(msgs)
    assert h.outcome("replayed") == 1
    await asyncio.sleep(d.config.result_ttl_s + 0.2)
    again = await d.begin("r", "fp")
    assert isinstance(again, Claim) and not again.taken_over
    await again.abandon()


async def test_different_fingerprint_conflicts(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("c", "fp-a")
    assert isinstance(claim, Claim)
    with pytest.raises(errors.AlreadyExists, match="different request body"):
        await d.begin("c", "fp-b")
    await own(claim, script(2))
    with pytest.raises(errors.AlreadyExists):
        await d.begin("c", "fp-b")  # also against a finished result
    assert h.outcome("conflict") == 2


async def test_abandon_wakes_joiners_and_lets_the_next_claim(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("a", "fp")
    join = await d.begin("a", "fp")
    assert isinstance(claim, Claim) and isinstance(join, Join)
    seen: list[pb.GenerateResponse] = []

    async def follow() -> None:
        async for m in join.messages():
            seen.append(m)

    follower = asyncio.create_task(follow())
    await claim.publish(script(3)[0])
    await asyncio.sleep(0.1)
    await claim.abandon()
    with pytest.raises(OwnerLost):
        # The abandon marker wakes the joiner well before the lease would have lapsed.
        await asyncio.wait_for(follower, LEASE_MS / 1000 / 2)
    assert wire(seen) == wire(script(3)[:1])
    nxt = await d.begin("a", "fp")
    assert isinstance(nxt, Claim) and not nxt.taken_over
    await own(nxt, script(2, "n"))
    replay = await d.begin("a", "fp")
    assert isinstance(replay, Replay)
    assert wire(await drain(replay.messages())) == wire(script(2, "n"))


async def test_lease_is_renewed_while_the_owner_lives(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("slow", "fp")
    join = await d.begin("slow", "fp")
    assert isinstance(claim, Claim) and isinstance(join, Join)
    follower = asyncio.create_task(drain(join.messages()))
    await asyncio.sleep(3 * LEASE_MS / 1000)  # nothing published: only the renewer keeps it alive
    assert not follower.done()
    assert isinstance(await d.begin("slow", "fp"), Join)
    msgs = await own(claim, script(3))
    assert wire(await asyncio.wait_for(follower, 2)) == wire(msgs)


async def test_dead_owner_is_taken_over(h: Harness) -> None:
    crashed = h.make()  # another backend process that dies mid-generation
    d = h.make()
    claim = await crashed.begin("dead", "fp")
    assert isinstance(claim, Claim)
    join = await d.begin("dead", "fp")
    assert isinstance(join, Join)
    seen: list[pb.GenerateResponse] = []

    async def follow() -> None:
        async for m in join.messages():
            seen.append(m)

    follower = asyncio.create_task(follow())
    await claim.publish(script(4, "old")[0])
    await asyncio.sleep(0.05)
    await crashed.close()  # no finish, no abandon, no more renewals
    with pytest.raises(OwnerLost):
        await asyncio.wait_for(follower, 3)
    assert wire(seen) == wire(script(4, "old")[:1])

    takeover = await d.begin("dead", "fp")
    assert isinstance(takeover, Claim) and takeover.taken_over
    assert h.outcome("taken_over") == 1
    late = await d.begin("dead", "fp")
    assert isinstance(late, Join)
    late_msgs = asyncio.create_task(drain(late.messages()))
    fresh = await own(takeover, script(3, "new"))
    # Joiners and replays see only the new generation.
    assert wire(await asyncio.wait_for(late_msgs, 2)) == wire(fresh)
    replay = await d.begin("dead", "fp")
    assert isinstance(replay, Replay)
    assert wire(await drain(replay.messages())) == wire(fresh)


async def test_every_outcome_carries_the_first_requests_identity(h: Harness) -> None:
    crashed = h.make()
    d = h.make()
    first, second, third = Identity("cmpl-1", 101), Identity("cmpl-2", 102), Identity("cmpl-3", 103)
    claim = await crashed.begin("who", "fp", first)
    assert isinstance(claim, Claim) and claim.identity == first
    join = await d.begin("who", "fp", second)
    assert isinstance(join, Join) and join.identity == first
    await crashed.close()  # dies mid-generation: the lease lapses
    await asyncio.sleep(LEASE_MS / 1000 + 0.1)
    takeover = await d.begin("who", "fp", third)
    # The generation is new, the identity is not: the dead owner's caller already got it.
    assert isinstance(takeover, Claim) and takeover.taken_over and takeover.identity == first
    await own(takeover, script(2))
    replay = await d.begin("who", "fp", third)
    assert isinstance(replay, Replay) and replay.identity == first


@pytest.mark.parametrize("reproducible", [True, False])
async def test_cancelled_owner_abandons_and_a_joiner_regenerates(h: Harness, reproducible: bool) -> None:
    d = h.make()
    started = asyncio.Event()
    calls = 0

    async def generate() -> AsyncIterator[pb.GenerateResponse]:
        nonlocal calls
        calls += 1
        first = calls == 1
        for m in script(4, reproducible=reproducible):
            yield m
            started.set()
            if first:
                await asyncio.sleep(30)  # the first owner's client goes away here

    seeded = request()
    owner = asyncio.create_task(drain(d.serve("cx", "fp", generate, request=seeded)))
    await asyncio.wait_for(started.wait(), 2)
    joiner = asyncio.create_task(drain(d.serve("cx", "fp", generate, request=seeded)))
    await asyncio.sleep(0.1)
    owner.cancel()
    if not reproducible:
        # Text was delivered and the replica promised no reproducible output: no resume, an error.
        with pytest.raises(errors.Unavailable):
            await asyncio.wait_for(joiner, 3)
        return
    # The joiner had one message; it starts over, claims, regenerates and skips what it delivered.
    got = await asyncio.wait_for(joiner, 3)
    assert calls == 2
    assert "".join(t for m in got for t in m.tokens) == "".join(t for m in script(4) for t in m.tokens)


async def test_publish_does_not_wait_for_redis(h: Harness) -> None:
    d = h.make()
    claim = await d.begin("hot", "fp")
    join = await d.begin("hot", "fp")
    assert isinstance(claim, Claim) and isinstance(join, Join)
    msgs = script(300)
    start = time.monotonic()
    for m in msgs:
        await claim.publish(m)  # queued; one background flush sends what has accumulated
    assert time.monotonic() - start < 0.05
    assert await claim.finish()
    assert wire(await asyncio.wait_for(drain(join.messages()), 2)) == wire(msgs)


async def _script_calls(url: str) -> int:
    """Script calls redis-server has run (INFO commandstats; the commands a script runs are counted
    apart, under their own names). Every dedupe round trip is one script."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_eval"))


async def test_a_one_message_generation_costs_two_redis_calls(h: Harness) -> None:
    # begin, then finish carrying the last message: no publish of its own for the message that
    # ends the generation (a non-streamed request is exactly that).
    d = h.make()
    (only,) = script(1)

    async def generate() -> AsyncIterator[pb.GenerateResponse]:
        yield only

    # Warm: connections made (CLIENT SETINFO) and scripts loaded, as in a running backend.
    await drain(d.serve("warm", "fp", generate, stream=False))
    before = await _script_calls(h.url)
    got = await drain(d.serve("two-calls", "fp", generate, stream=False))
    assert wire(got) == wire([only])
    assert await _script_calls(h.url) - before == 2
    replay = await d.begin("two-calls", "fp")
    assert isinstance(replay, Replay)
    assert wire(await drain(replay.messages())) == wire([only])
