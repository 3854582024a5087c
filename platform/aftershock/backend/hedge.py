"""Hedged first tokens: when a try's first message is late, race a second try on another replica.

The first try to produce a message wins and the other is cancelled (its engine aborts). When to
hedge comes from the model's recent time to first message (a high quantile of a sliding window) or
a fixed per-model threshold; whether a hedge may start is the retry budget's call, so hedges can
never amplify an outage beyond what retries may.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class HedgeConfig:
    """Per model; off unless the registry turns it on."""

    enabled: bool = False
    # A fixed threshold in seconds; None derives it from recent first-message times.
    after_s: float | None = None
    quantile: float = 0.95
    # Never hedge sooner than this, however fast the model has been.
    min_after_s: float = 0.02
    # First-message times kept per model, and how many are needed before deriving a threshold.
    window: int = 256
    min_samples: int = 20
    # A replica whose first try lost to a hedge is passed over by placement this long.
    slow_for_s: float = 2.0


class FirstMessageTimes:
    """Recent times to first message for one model, for a quantile threshold."""

    def __init__(self, window: int) -> None:
        self._samples: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float) -> None:
        self._samples.append(seconds)

    def quantile(self, q: float, min_samples: int) -> float | None:
        if len(self._samples) < min_samples:
            return None
        ordered = sorted(self._samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def threshold(config: HedgeConfig, times: FirstMessageTimes) -> float | None:
    """Seconds to wait before hedging, or None (off, or too little history yet)."""
    if not config.enabled:
        return None
    after = (
        config.after_s if config.after_s is not None else times.quantile(config.quantile, config.min_samples)
    )
    return None if after is None else max(config.min_after_s, after)


@dataclass
class Winner(Generic[T]):
    index: int  # 0: the first try, 1: the hedge
    first: T
    messages: AsyncIterator[T]
    hedged: bool


async def _cancel(tasks: list[asyncio.Future[T]]) -> None:
    """Cancel the losing reads; the try's generator closes (and cancels its call) as they end."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


async def first_message(
    primary: AsyncIterator[T], after_s: float | None, start_hedge: Callable[[], AsyncIterator[T] | None]
) -> Winner[T]:
    """The first message of whichever try produces one first; the other try is cancelled.

    `start_hedge` is asked once, after `after_s` without a first message; it returns None when no
    hedge may start (no other replica, or the budget says no). A try that fails does not end the
    race while the other can still win; when both fail, the first try's error is raised.
    """
    iterators = [primary]
    tasks: list[asyncio.Future[T]] = [asyncio.ensure_future(anext(primary))]
    try:
        if after_s is not None:
            done, _ = await asyncio.wait(tasks, timeout=after_s)
            if not done:
                hedge = start_hedge()
                if hedge is not None:
                    iterators.append(hedge)
                    tasks.append(asyncio.ensure_future(anext(hedge)))
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=tasks.index):
                if task.exception() is None:
                    index = tasks.index(task)
                    await _cancel([t for t in tasks if t is not task])
                    return Winner(index, task.result(), iterators[index], hedged=len(tasks) > 1)
        error = tasks[0].exception()
        assert error is not None
        raise error
    except BaseException:
        await _cancel([t for t in tasks if not t.done()])
        raise
