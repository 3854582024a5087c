"""What every toxic shares: its direction, the stage it runs on, its attributes and toxicity.

Each toxic's `pipe` runs on one stage of a link (link.py): it takes chunks from the stage's input
and passes them on, delayed, sliced, cut or dropped, the way Toxiproxy's toxic of the same name does
(timings, per-chunk vs per-stream effects, when the stream is closed). A pipe must not catch
CancelledError: cancelling it is how a live chain is rewired, and the stage's `held` list keeps
what it had taken but not yet passed on.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar, Literal, Protocol

from aftershock.faultproxy import jsonbody
from aftershock.faultproxy.channel import Chunk, Expired, Item
from aftershock.faultproxy.errors import BadRequestBody, InvalidStream


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
