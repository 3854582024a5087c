"""The stall watch (backend/stall.py): a stream's idle bound with one timer per idle period."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aftershock.backend.stall import StallWatch

IDLE_S = 0.1


async def _paced(gaps_s: list[float]) -> AsyncIterator[int]:
    for i, gap in enumerate(gaps_s):
        await asyncio.sleep(gap)
        yield i


async def _drain(watch: StallWatch, messages: AsyncIterator[int], at_yield_s: float = 0.0) -> list[int]:
    got = []
    try:
        while True:
            try:
                got.append(await watch.next(messages))
            except StopAsyncIteration:
                return got
            await asyncio.sleep(at_yield_s)  # the caller relaying the message
    finally:
        watch.close()


async def test_a_steady_stream_is_never_cut_and_arms_a_timer_per_idle_period() -> None:
    watch = StallWatch(IDLE_S)
    got = await _drain(watch, _paced([0.01] * 40))  # 0.4 s of messages 10 ms apart
    assert got == list(range(40))
    # asyncio.timeout per read would have armed 40; the watch about one per idle period.
    assert 1 <= watch.timers_armed <= 8


async def test_a_stalled_stream_raises_timeout_after_the_idle_bound() -> None:
    watch = StallWatch(IDLE_S)
    loop = asyncio.get_running_loop()
    got: list[int] = []
    messages = _paced([0.01, 0.01, 0.01, 5.0])
    started = 0.0
    with pytest.raises(TimeoutError):
        while True:
            started = loop.time()
            got.append(await watch.next(messages))
    waited = loop.time() - started
    assert got == [0, 1, 2]
    assert IDLE_S <= waited < IDLE_S + 0.1, waited
    watch.close()


async def test_each_gap_just_under_the_bound_passes() -> None:
    # Every gap is 80 % of the bound, so a timer armed for an earlier read must not cut a later one.
    watch = StallWatch(IDLE_S)
    assert await _drain(watch, _paced([0.08] * 6)) == list(range(6))


async def test_time_spent_at_the_yield_is_not_waiting_for_the_replica() -> None:
    watch = StallWatch(IDLE_S)
    assert await _drain(watch, _paced([0.0] * 4), at_yield_s=0.25) == list(range(4))


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    watch = StallWatch(IDLE_S)
    reader = asyncio.create_task(_drain(watch, _paced([0.01, 5.0])))
    await asyncio.sleep(0.05)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    await asyncio.sleep(IDLE_S)  # the watch's timer, if left armed, would fire now
    assert reader.cancelled()


async def test_a_cancel_from_outside_at_the_moment_of_the_stall_stays_a_cancel() -> None:
    watch = StallWatch(IDLE_S)
    loop = asyncio.get_running_loop()
    reader = asyncio.create_task(_drain(watch, _paced([0.0, 5.0])))
    await asyncio.sleep(0.01)  # waiting for the second message
    timer = watch._timer
    assert timer is not None
    # Cancelled by its caller in the same loop turn as the watch gives up: the caller's wins.
    loop.call_at(timer.when(), reader.cancel)
    with pytest.raises(asyncio.CancelledError):
        await reader
