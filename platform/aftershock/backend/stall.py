"""A stream's idle bound with one timer per idle period, not one per message.

`async with asyncio.timeout(idle)` around every read arms and cancels a timer and builds a context
manager for each message: about 5 µs of CPU here, paid on every token of a paced stream. A stall
watch only notes when a read began; its single timer, when it fires, looks at how long the read in
progress (if any) has been waiting and either cancels it, as asyncio.timeout would, or sleeps
until that read's own bound. Time spent at a yield, while the caller relays the previous message,
is not counted: only waiting for the replica is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

T = TypeVar("T")


class StallWatch:
    """Reads messages with `next`, raising TimeoutError when one takes longer than `idle_s`."""

    def __init__(self, idle_s: float) -> None:
        self._idle_s = idle_s
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[object] | None = None
        self._waiting_since: float | None = None  # set while a read is in progress
        self._timer: asyncio.TimerHandle | None = None
        self._fired = False
        self.timers_armed = 0  # how many timers this watch armed (one per idle period at most)

    async def next(self, messages: AsyncIterator[T]) -> T:
        """The next message; StopAsyncIteration at the end, TimeoutError when it does not come."""
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._waiting_since = self._loop.time()
        if self._timer is None:
            self._arm(self._waiting_since + self._idle_s)
        try:
            return await anext(messages)
        except asyncio.CancelledError:
            # Ours only if nobody else asked for the cancel too (as asyncio.timeout decides).
            if self._fired and task.uncancel() == 0:
                raise TimeoutError() from None
            raise
        finally:
            self._waiting_since = None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_at(when, self._on_timer)
        self.timers_armed += 1

    def _on_timer(self) -> None:
        self._timer = None
        since = self._waiting_since
        if since is None or self._fired:
            return  # no read in progress: the next one arms a timer
        due = since + self._idle_s
        if self._loop.time() < due:
            self._arm(due)  # the read in progress began after this timer was set
            return
        self._fired = True
        assert self._task is not None
        self._task.cancel()
