"""The one way tests wait for something another thread, task or process makes true: poll a
predicate until it holds or a deadline passes (never a fixed sleep standing in for the wait)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(what: str, within_s: float, last: object) -> AssertionError:
    return AssertionError(f"{what} not met within {within_s}s (last: {last!r})")


def wait_for(
    predicate: Callable[[], T], within_s: float = 5.0, what: str = "condition", every_s: float = 0.05
) -> T:
    """Returns the predicate's first truthy value; raises AssertionError after `within_s`."""
    deadline = time.monotonic() + within_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise _timed_out(what, within_s, value)
        time.sleep(every_s)
    return value


async def wait_until(
    predicate: Callable[[], T | Awaitable[T]],
    within_s: float = 5.0,
    what: str = "condition",
    every_s: float = 0.01,
) -> T:
    """`wait_for` for a test running on the event loop: sleeps without blocking the loop. The
    predicate may be a coroutine function, e.g. one that sends a probe request before it checks."""
    deadline = time.monotonic() + within_s
    while True:
        result = predicate()
        value: T = await result if inspect.isawaitable(result) else result  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            raise _timed_out(what, within_s, value)
        await asyncio.sleep(every_s)
