"""Toxic types, their attributes and what each does to the chunks of one stream.

Each toxic's `pipe` runs on one stage of a link (link.py): it takes chunks from the stage's input
and passes them on, delayed, sliced, cut or dropped, the way Toxiproxy's toxic of the same name does
(timings, per-chunk vs per-stream effects, when the stream is closed). A pipe must not catch
CancelledError: cancelling it is how a live chain is rewired, and the stage's `held` list keeps
what it had taken but not yet passed on.
"""

from __future__ import annotations

import asyncio
import enum
import random
from typing import Any, ClassVar, Literal, Protocol

from aftershock.faultproxy import jsonbody
from aftershock.faultproxy.channel import Chunk, Expired, Item
from aftershock.faultproxy.errors import BadRequestBody, InvalidStream, InvalidToxicType


class Direction(enum.IntEnum):
    # Upstream toxics act on client -> server data, downstream ones on server -> client.
    UPSTREAM = 0
    DOWNSTREAM = 1

    def __str__(self) -> str:
        return self.name.lower()


def parse_direction(stream: str) -> Direction:
    try:
        return Direction[stream.upper()]
    except KeyError:
        raise InvalidStream() from None


class StageIO(Protocol):
    """What a pipe sees of its stage."""

    state: Any

    async def recv(self) -> Item: ...

    async def recv_within(self, timeout_s: float) -> Item | Literal[Expired.EXPIRED]: ...

    async def send(self, chunk: Chunk, rest: Chunk | None = None) -> None:
        """Pass `chunk` on; `rest` is what is still held of the chunk taken last (slicing)."""

    def drop(self) -> None:
        """Forget the chunk taken last."""

    async def close(self, *, reset: bool = False) -> None:
        """End the stream; `reset` makes the proxy close both sockets with a TCP RST."""


class Toxic:
    type_name: ClassVar[str]
    go_name: ClassVar[str]  # the Go struct, named in attribute errors as Toxiproxy does
    attribute_names: ClassVar[tuple[str, ...]] = ()
    # Chunks the channel into this stage can hold; latency reads ahead so delays overlap.
    buffer_size: ClassVar[int] = 0
    # Toxiproxy's timeout toxic closes the stream when it is removed from a live link.
    closes_when_removed: ClassVar[bool] = False

    def __init__(self, name: str, stream: str, toxicity: float) -> None:
        self.name = name
        self.stream = stream  # as given: Toxiproxy echoes it back unnormalised
        self.direction = parse_direction(stream)
        self.toxicity = toxicity

    def attributes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.attribute_names}

    def checked_attributes(self, raw: object) -> dict[str, int]:
        """Validated attribute values from a request; absent ones are left out."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise BadRequestBody(
                f"json: cannot unmarshal {jsonbody.json_kind(raw)} into Go struct field "
                f"ToxicWrapper.attributes of type toxics.{self.go_name}"
            )
        given = jsonbody.fields(raw, self.attribute_names)
        return {name: jsonbody.as_int64(value, f"{self.go_name}.{name}") for name, value in given.items()}

    def set_attributes(self, values: dict[str, int]) -> None:
        for name, value in values.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, object]:
        # Go prints float32(1) as 1.
        toxicity = int(self.toxicity) if self.toxicity.is_integer() else self.toxicity
        return {
            "attributes": self.attributes(),
            "name": self.name,
            "type": self.type_name,
            "stream": self.stream,
            "toxicity": toxicity,
        }

    def new_state(self) -> Any:
        """Per-link state kept while the toxic stays on the link (limit_data's byte count)."""
        return None

    async def pipe(self, stage: StageIO) -> None:
        raise NotImplementedError


async def _pass_through(stage: StageIO) -> None:
    while True:
        chunk = await stage.recv()
        if chunk is None:
            await stage.close()
            return
        await stage.send(chunk)


class NoopToxic(Toxic):
    """Passes data through; also the hidden first stage of every link, and what an unlucky roll of
    `toxicity` runs instead of the toxic."""

    type_name = "noop"
    go_name = "NoopToxic"

    async def pipe(self, stage: StageIO) -> None:
        await _pass_through(stage)


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


TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (
        NoopToxic,
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
    )
}


def new_toxic(body: object) -> tuple[Toxic, object]:
    """A toxic from a create request, checked in Toxiproxy's order, and its raw attributes.

    The attributes are validated only after the caller has checked the name is free, since
    Toxiproxy answers 409 for a duplicate before it looks at them.
    """
    obj = jsonbody.expect_object(body, "toxics.ToxicWrapper")
    given = jsonbody.fields(obj, ("name", "type", "stream", "toxicity", "attributes"))
    name = jsonbody.as_str(given.get("name", ""), "ToxicWrapper.name")
    type_name = jsonbody.as_str(given.get("type", ""), "ToxicWrapper.type")
    stream = jsonbody.as_str(given.get("stream", "downstream"), "ToxicWrapper.stream")
    toxicity = jsonbody.as_float(given.get("toxicity", 1.0), "ToxicWrapper.toxicity")
    raw_attributes = given.get("attributes")
    if raw_attributes is not None and not isinstance(raw_attributes, dict):
        raise BadRequestBody(
            f"json: cannot unmarshal {jsonbody.json_kind(raw_attributes)} into Go struct field "
            "ToxicWrapper.attributes of type toxics.NoopToxic"
        )
    parse_direction(stream)
    if not name:
        name = f"{type_name}_{stream}"
    cls = TOXIC_TYPES.get(type_name)
    if cls is None:
        raise InvalidToxicType()
    return cls(name, stream, toxicity), raw_attributes


def checked_update(toxic: Toxic, body: object) -> tuple[float, dict[str, int]]:
    """The new toxicity and attribute values of an update request; name, type and stream stay."""
    obj = jsonbody.expect_object(body, "toxics.ToxicWrapper")
    given = jsonbody.fields(obj, ("attributes", "toxicity"))
    toxicity = toxic.toxicity
    if "toxicity" in given:
        toxicity = jsonbody.as_float(given["toxicity"], "ToxicWrapper.toxicity")
    return toxicity, toxic.checked_attributes(given.get("attributes"))
