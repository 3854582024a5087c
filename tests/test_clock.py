"""The clock seam: FakeClock moves only when slept on or advanced; SystemClock is monotonic."""

from __future__ import annotations

import asyncio

from aftershock.clock import SYSTEM_CLOCK, FakeClock, SystemClock


async def test_fake_clock_moves_only_when_told() -> None:
    clock = FakeClock(start=50.0)
    assert clock.now() == 50.0
    await asyncio.sleep(0)
    assert clock.now() == 50.0
    await clock.sleep(2.5)
    assert clock.now() == 52.5
    await clock.sleep(-1.0)  # never backwards
    assert clock.now() == 52.5
    clock.advance(0.5)
    assert clock.now() == 53.0


async def test_fake_sleep_yields_to_other_tasks() -> None:
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(10.0)
    assert ran == ["other"]
    await task


async def test_system_clock_is_monotonic_and_really_sleeps() -> None:
    assert isinstance(SYSTEM_CLOCK, SystemClock)
    before = SYSTEM_CLOCK.now()
    await SYSTEM_CLOCK.sleep(0.01)
    assert SYSTEM_CLOCK.now() - before >= 0.009
