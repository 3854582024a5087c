"""The toxic kinds Toxiproxy has, each as Toxiproxy applies it to one stream."""

from __future__ import annotations

import asyncio
import random

from aftershock.faultproxy.channel import Chunk, Expired
from aftershock.faultproxy.toxic import StageIO, Toxic


class LatencyToxic(Toxic):
    """Each chunk leaves `latency` +/- `jitter` ms after the proxy read it."""

    type_name = "latency"
    go_name = "LatencyToxic"
    attribute_names = ("latency", "jitter")
    buffer_size = 1024
    latency = 0
    jitter = 0

    def _delay_s(self) -> float:
        delay = self.latency
        if self.jitter > 0:
            delay += random.randrange(-self.jitter, self.jitter)
        return delay / 1000

    async def pipe(self, stage: StageIO) -> None:
        loop = asyncio.get_running_loop()
        while True:
            chunk = await stage.recv()
            if chunk is None:
                await stage.close()
                return
            wait = self._delay_s() - (loop.time() - chunk.ts)
            if wait > 0:
                await asyncio.sleep(wait)
            # Advance the timestamp by the wait so a later latency toxic adds its delay on top.
            await stage.send(Chunk(chunk.data, chunk.ts + wait))


class BandwidthToxic(Toxic):
    """At most `rate` KB/s: each chunk waits len/rate, and big chunks go out in 100 ms slices."""

    type_name = "bandwidth"
    go_name = "BandwidthToxic"
    attribute_names = ("rate",)
    rate = 0

    async def pipe(self, stage: StageIO) -> None:
        loop = asyncio.get_running_loop()
        owed = 0.0  # seconds of sending time not yet slept; oversleeping is credited back
        while True:
            chunk = await stage.recv()
            if chunk is None:
                await stage.close()
                return
            rate = self.rate  # bytes per millisecond
            if rate <= 0:
                await stage.send(chunk)
                continue
            owed += len(chunk.data) / rate / 1000
            data, per_slice = chunk.data, rate * 100
            while len(data) > per_slice:
                await asyncio.sleep(0.1)
                piece, data = data[:per_slice], data[per_slice:]
                await stage.send(Chunk(piece, chunk.ts), Chunk(data, chunk.ts))
                owed -= 0.1
            start = loop.time()
            await asyncio.sleep(max(0.0, owed))
            owed -= loop.time() - start
            await stage.send(Chunk(data, chunk.ts))


class SlowCloseToxic(Toxic):
    """Holds the close of the stream back for `delay` ms."""

    type_name = "slow_close"
    go_name = "SlowCloseToxic"
    attribute_names = ("delay",)
    delay = 0

    async def pipe(self, stage: StageIO) -> None:
        while True:
            chunk = await stage.recv()
            if chunk is None:
                await asyncio.sleep(self.delay / 1000)
                await stage.close()
                return
            await stage.send(chunk)


class TimeoutToxic(Toxic):
    """Drops all data; closes the stream once none has come for `timeout` ms (0: never)."""

    type_name = "timeout"
    go_name = "TimeoutToxic"
    attribute_names = ("timeout",)
    closes_when_removed = True
    timeout = 0

    async def pipe(self, stage: StageIO) -> None:
        while True:
            # Toxiproxy restarts the timer on every chunk it drops, so this is an idle timeout.
            item = await (stage.recv_within(self.timeout / 1000) if self.timeout > 0 else stage.recv())
            if item is None or item is Expired.EXPIRED:
                await stage.close()
                return
            stage.drop()


class ResetPeerToxic(Toxic):
    """On the first data (or end) of the stream, waits `timeout` ms, then resets the connection."""

    type_name = "reset_peer"
    go_name = "ResetToxic"
    attribute_names = ("timeout",)
    timeout = 0

    async def pipe(self, stage: StageIO) -> None:
        await stage.recv()
        await asyncio.sleep(self.timeout / 1000)
        await stage.close(reset=True)


class SlicerToxic(Toxic):
    """Splits each chunk into pieces of about `average_size` +/- `size_variation` bytes, `delay` us
    apart."""

    type_name = "slicer"
    go_name = "SlicerToxic"
    attribute_names = ("average_size", "size_variation", "delay")
    average_size = 0
    size_variation = 0
    delay = 0

    def _bounds(self, start: int, end: int) -> list[int]:
        """Piece boundaries as Toxiproxy cuts them: halve (+/- the variation) until small enough."""
        if end - start - self.average_size <= self.size_variation or end - start < 2:
            return [start, end]
        mid = start + (end - start) // 2
        if self.size_variation > 0:
            mid += random.randrange(-self.size_variation, self.size_variation)
        mid = min(max(mid, start + 1), end - 1)  # a variation above the average cannot empty a piece
        return [*self._bounds(start, mid), *self._bounds(mid, end)]

    async def pipe(self, stage: StageIO) -> None:
        while True:
            chunk = await stage.recv()
            if chunk is None:
                await stage.close()
                return
            data = chunk.data
            if self.average_size <= 0:
                await stage.send(chunk)
                continue
            bounds = self._bounds(0, len(data))
            for i in range(0, len(bounds), 2):
                lo, hi = bounds[i], bounds[i + 1]
                rest = Chunk(data[hi:], chunk.ts) if hi < len(data) else None
                await stage.send(Chunk(data[lo:hi], chunk.ts), rest)
                await asyncio.sleep(self.delay / 1_000_000)


class _Transmitted:
    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


class LimitDataToxic(Toxic):
    """Passes `bytes` bytes of the stream (counted across updates of the toxic), then closes it."""

    type_name = "limit_data"
    go_name = "LimitDataToxic"
    attribute_names = ("bytes",)
    bytes = 0

    def new_state(self) -> _Transmitted:
        return _Transmitted()

    async def pipe(self, stage: StageIO) -> None:
        sent: _Transmitted = stage.state
        while True:
            chunk = await stage.recv()
            if chunk is None:
                await stage.close()
                return
            remaining = max(0, self.bytes - sent.count)
            if remaining < len(chunk.data):
                chunk = Chunk(chunk.data[:remaining], chunk.ts)
            if chunk.data:
                await stage.send(chunk)
                sent.count += len(chunk.data)
            else:
                stage.drop()
            if self.bytes - sent.count <= 0:
                await stage.close()
                return
