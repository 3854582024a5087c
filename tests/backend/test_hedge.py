"""Hedged first tokens: the race between a slow try and its hedge, and when to hedge."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aftershock.backend.hedge import FirstMessageTimes, HedgeConfig, first_message, threshold


class FakeCall:
    """A try whose first message comes after `delay_s` (or that fails with `error`)."""

    def __init__(self, name: str, delay_s: float, error: Exception | None = None) -> None:
        self.name = name
        self.delay_s = delay_s
        self.error = error
        self.cancelled = False

    async def _messages(self) -> AsyncIterator[str]:
        try:
            await asyncio.sleep(self.delay_s)
            if self.error is not None:
                raise self.error
            yield f"{self.name}:1"
            yield f"{self.name}:2"
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    def __aiter__(self) -> AsyncIterator[str]:
        return self._messages()


async def test_fast_first_try_never_starts_a_hedge() -> None:
    started: list[FakeCall] = []

    def hedge() -> AsyncIterator[str]:
        started.append(FakeCall("b", 0.0))
        return aiter(started[-1])

    primary = FakeCall("a", 0.0)
    won = await first_message(aiter(primary), after_s=0.2, start_hedge=hedge)
    assert (won.index, won.first, won.hedged) == (0, "a:1", False)
    assert started == [] and not primary.cancelled
    assert [m async for m in won.messages] == ["a:2"]


async def test_late_first_try_loses_to_the_hedge_and_is_cancelled() -> None:
    primary, second = FakeCall("a", 5.0), FakeCall("b", 0.01)
    won = await first_message(aiter(primary), after_s=0.02, start_hedge=lambda: aiter(second))
    assert (won.index, won.first, won.hedged) == (1, "b:1", True)
    assert primary.cancelled and not second.cancelled


async def test_no_hedge_allowed_waits_for_the_first_try() -> None:
    primary = FakeCall("a", 0.05)
    won = await first_message(aiter(primary), after_s=0.01, start_hedge=lambda: None)
    assert (won.index, won.hedged) == (0, False)


async def test_a_failed_try_leaves_the_other_to_win() -> None:
    primary, second = FakeCall("a", 0.05, error=RuntimeError("replica down")), FakeCall("b", 0.08)
    won = await first_message(aiter(primary), after_s=0.01, start_hedge=lambda: aiter(second))
    assert won.first == "b:1"


async def test_both_failing_raises_the_first_tries_error() -> None:
    primary = FakeCall("a", 0.03, error=RuntimeError("first"))
    second = FakeCall("b", 0.01, error=RuntimeError("second"))
    with pytest.raises(RuntimeError, match="first"):
        await first_message(aiter(primary), after_s=0.01, start_hedge=lambda: aiter(second))


async def test_cancelling_the_race_cancels_both_calls() -> None:
    primary, second = FakeCall("a", 5.0), FakeCall("b", 5.0)
    race = asyncio.ensure_future(
        first_message(aiter(primary), after_s=0.01, start_hedge=lambda: aiter(second))
    )
    await asyncio.sleep(0.05)
    race.cancel()
    with pytest.raises(asyncio.CancelledError):
        await race
    assert primary.cancelled and second.cancelled


def test_threshold_is_off_by_default_and_needs_history() -> None:
    times = FirstMessageTimes(window=100)
    assert threshold(HedgeConfig(), times) is None
    on = HedgeConfig(enabled=True, min_samples=10, quantile=0.9)
    assert threshold(on, times) is None
    for i in range(100):
        times.observe(i / 1000)
    assert threshold(on, times) == pytest.approx(0.09)
    assert threshold(HedgeConfig(enabled=True, after_s=0.5), times) == 0.5
    assert threshold(HedgeConfig(enabled=True, after_s=0.001, min_after_s=0.02), times) == 0.02
