"""One direction of a proxied connection: source socket -> chain of toxic stages -> destination socket.

As in Toxiproxy, a hidden no-op stage always heads the chain, every toxic runs as its own stage with a
channel in front of it, and toxics added, updated or removed through the API are spliced into the
chains of connections already open: the neighbouring stage is interrupted, the channels are rewired
and the stages restarted, without losing or reordering a byte. All of it happens synchronously on the
event loop (an interrupted task never runs pipe code again), so API calls need no locking against
the data path.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Literal, Protocol

from aftershock.faultproxy.channel import EXPIRED, Channel, Chunk, Expired, Item
from aftershock.faultproxy.toxics import Direction, NoopToxic, Toxic

log = logging.getLogger(__name__)

READ_SIZE = 32 * 1024  # as Go's io.Copy
_HIDDEN_NOOP = NoopToxic("", "downstream", 1.0)
_UNLUCKY = NoopToxic("", "downstream", 1.0)  # what runs when toxicity says "not this time"


class LinkOwner(Protocol):
    """The connection a link belongs to."""

    def reset_sockets(self) -> None:
        """Make the closing of both sockets send a TCP RST."""

    def link_finished(self, link: Link) -> None: ...

    def count_bytes(self, direction: Direction, *, received: int = 0, sent: int = 0) -> None:
        """Tally bytes read from a link's source and written to its destination."""

    def abort(self) -> None: ...


class Stage:
    """One toxic running on one link, between its input and output channels."""

    def __init__(self, link: Link, toxic: Toxic, input: Channel, output: Channel) -> None:
        self.link = link
        self.toxic = toxic
        self.input = input
        self.output = output
        self.state = toxic.new_state()
        # Taken from the input but not yet passed on; given back when the stage is interrupted.
        self.held: list[Item] = []
        self.closed = False  # this stage has sent the end of the stream
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.closed:
            return
        # Toxiproxy rolls toxicity whenever a stage (re)starts: at connect, and when the chain
        # around it changes.
        toxic = self.toxic if random.random() < self.toxic.toxicity else _UNLUCKY
        self._task = asyncio.get_running_loop().create_task(toxic.pipe(self))
        self._task.add_done_callback(self._on_done)

    def interrupt(self) -> list[Item] | None:
        """Stop the pipe; returns what it held, or None when the stream already ended here."""
        if self.closed or self._task is None:
            return None
        self._task.cancel()
        self._task = None
        held, self.held = self.held, []
        return held

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("toxic failed", exc_info=exc, extra={"toxic": self.toxic.type_name})
            self.link.owner.abort()

    # The StageIO interface the toxics' pipes use.

    async def recv(self) -> Item:
        item = await self.input.get()
        self.held = [item]
        return item

    async def recv_within(self, timeout_s: float) -> Item | Literal[Expired.EXPIRED]:
        item = await self.input.get_within(timeout_s)
        if item is not EXPIRED:
            self.held = [item]
        return item

    async def send(self, chunk: Chunk, rest: Chunk | None = None) -> None:
        await self.output.put(chunk)
        self.held = [rest] if rest is not None else []

    def drop(self) -> None:
        self.held = []

    async def close(self, *, reset: bool = False) -> None:
        if reset:
            self.link.owner.reset_sockets()
        self.held = [None]
        await self.output.put(None)
        self.held = []
        self.closed = True


class Link:
    def __init__(
        self,
        owner: LinkOwner,
        direction: Direction,
        source: asyncio.StreamReader,
        dest: asyncio.StreamWriter,
        chain: Sequence[Toxic],
    ) -> None:
        self.owner = owner
        self.direction = direction
        self.source = source
        self.dest = dest
        self.finished = False  # the destination has been closed
        self._input = Channel()
        self.stages: list[Stage] = []
        toxics = [_HIDDEN_NOOP, *chain]
        channel = self._input
        for i, toxic in enumerate(toxics):
            output = Channel(toxics[i + 1].buffer_size if i + 1 < len(toxics) else 0)
            self.stages.append(Stage(self, toxic, channel, output))
            channel = output
        self._output = channel
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._read()))
        for stage in self.stages:
            stage.start()
        self._tasks.append(loop.create_task(self._write()))

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        for stage in self.stages:
            stage.cancel()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self.source.read(READ_SIZE)
            except OSError:  # reset by the peer, or our side closed the socket
                data = b""
            if not data:
                await self._input.put(None)
                return
            self.owner.count_bytes(self.direction, received=len(data))
            await self._input.put(Chunk(data, loop.time()))

    async def _write(self) -> None:
        try:
            while True:
                item = await self._output.get()
                if item is None:
                    break
                self.dest.write(item.data)
                await self.dest.drain()
                self.owner.count_bytes(self.direction, sent=len(item.data))
        except OSError as exc:
            log.debug("destination failed", extra={"direction": str(self.direction), "error": str(exc)})
        finally:
            self.finished = True
            # Like Toxiproxy, the whole socket closes (no half-close); the opposite link then reads
            # the end of its source and closes its own destination.
            self.dest.close()
            self.owner.link_finished(self)

    def _index(self, toxic: Toxic) -> int | None:
        for i, stage in enumerate(self.stages):
            if stage.toxic is toxic:
                return i
        return None

    def add_toxic(self, toxic: Toxic) -> None:
        """Append a stage at the end of the chain."""
        if self.finished:
            return
        last = self.stages[-1]
        held = last.interrupt()
        if held is None:
            return  # the stream already ended
        last.input.push_front(held)
        channel = Channel(toxic.buffer_size)
        stage = Stage(self, toxic, channel, last.output)
        last.output = channel
        self.stages.append(stage)
        stage.start()
        last.start()

    def update_toxic(self, toxic: Toxic) -> None:
        """Restart the toxic's stage so it runs with its new attributes (and rolls toxicity again)."""
        i = self._index(toxic)
        if i is None:
            return
        stage = self.stages[i]
        held = stage.interrupt()
        if held is None:
            return
        stage.input.push_front(held)
        stage.start()

    def remove_toxic(self, toxic: Toxic) -> None:
        """Take the toxic's stage out; what it held or had queued goes on untouched, in order."""
        i = self._index(toxic)
        if i is None:
            return
        stage, before = self.stages[i], self.stages[i - 1]
        held = stage.interrupt()
        if held is None:
            return
        if toxic.closes_when_removed:
            stage.input.take_all()
            stage.output.put_nowait(None)
            stage.closed = True
            return
        before_held = before.interrupt()
        for item in [*held, *stage.input.take_all()]:
            stage.output.put_nowait(item)
        before.output = stage.output
        del self.stages[i]
        if before_held is not None:
            before.input.push_front(before_held)
            before.start()
