"""Chunks of stream data and the bounded FIFOs that carry them between toxic stages.

A stage's task may be cancelled at any await (that is how a live chain is rewired), so taking from
and putting into a channel must never half-happen: waiters are only wake-up signals, and items move
synchronously once a task resumes. A cancelled get() therefore takes nothing and a cancelled put()
puts nothing; the stage's `held` list (see link.py) accounts for anything in between.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(slots=True)
class Chunk:
    data: bytes
    # Loop time when the proxy read it; latency is measured from here, as Toxiproxy's timestamps.
    ts: float


# None marks the end of the stream (the source closed, or a toxic closed the link).
Item = Chunk | None


class Expired(enum.Enum):
    EXPIRED = enum.auto()


EXPIRED: Literal[Expired.EXPIRED] = Expired.EXPIRED


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Channel:
    """One producer, one consumer; `capacity` 0 behaves as Go's unbuffered channel (one in flight)."""

    __slots__ = ("_capacity", "_getter", "_items", "_putter")

    def __init__(self, capacity: int = 0) -> None:
        self._items: deque[Item] = deque()
        self._capacity = max(1, capacity)
        self._getter: asyncio.Future[None] | None = None
        self._putter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    async def get(self) -> Item:
        while not self._items:
            await self._wait_readable(None)
        return self._pop()

    async def get_within(self, timeout_s: float) -> Item | Literal[Expired.EXPIRED]:
        """Like get(), or EXPIRED when nothing came within `timeout_s`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._items:
            if loop.time() >= deadline:
                return EXPIRED
            await self._wait_readable(deadline)
        return self._pop()

    async def put(self, item: Item) -> None:
        while len(self._items) >= self._capacity:
            fut = asyncio.get_running_loop().create_future()
            self._putter = fut
            try:
                await fut
            finally:
                if self._putter is fut:
                    self._putter = None
        self.put_nowait(item)

    def put_nowait(self, item: Item) -> None:
        """Append past the capacity: used only to flush a removed stage's data onwards."""
        self._items.append(item)
        _wake(self._getter)

    def push_front(self, items: Iterable[Item]) -> None:
        """Return items an interrupted stage had taken, so its restarted pipe sees them first."""
        self._items.extendleft(reversed(list(items)))
        _wake(self._getter)

    def take_all(self) -> list[Item]:
        items = list(self._items)
        self._items.clear()
        _wake(self._putter)
        return items

    def _pop(self) -> Item:
        item = self._items.popleft()
        _wake(self._putter)
        return item

    async def _wait_readable(self, deadline: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._getter = fut
        timer = loop.call_at(deadline, _wake, fut) if deadline is not None else None
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            if self._getter is fut:
                self._getter = None
