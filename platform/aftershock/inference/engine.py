"""The seam between the inference service and whatever generates tokens.

An engine yields `EngineOutput`s; each holds every token that became ready since the previous one
(the caller never waits for a fixed count, and the first token is never held back). Closing the
iterator early (client gone, deadline passed) aborts the request inside the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

# vLLM's finish reasons: "error" is a request-level engine failure worth retrying elsewhere,
# "repetition" a detected repetitive pattern that ends the completion cleanly.
FinishReason = Literal["stop", "length", "abort", "error", "repetition"]


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class EngineRequest:
    request_id: str
    model: str
    max_tokens: int
    prompt: str | None = None
    messages: tuple[ChatTurn, ...] | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Monotonic time after which the engine stops working on the request.
    deadline: float | None = None
    # False when the caller wants the whole answer at once (an engine relaying to a server may then
    # ask it for one response instead of a stream of events).
    stream: bool = True

    @property
    def deterministic(self) -> bool:
        """Seeded or greedy: the same request always yields the same tokens."""
        return self.seed is not None or self.temperature == 0.0


@dataclass(slots=True)
class EngineOutput:
    tokens: list[str]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    queue_s: float = 0.0
    ttft_s: float = 0.0
    e2e_s: float = 0.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    max_model_len: int
    max_output_tokens: int
    engine: str


@dataclass(slots=True)
class EngineStats:
    """The engine's own counters, readable in-process and exported as vllm:* metrics."""

    started: int = 0
    finished: int = 0
    aborted: int = 0
    generated_tokens: int = 0
    by_model: dict[str, int] = field(default_factory=dict)


class Engine(Protocol):
    kind: str
    # Whether a seeded or greedy request always yields the same text on any replica of this engine
    # (mid-stream failover resumes only then). Known once start() has returned.
    reproducible: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def models(self) -> Sequence[ModelSpec]: ...

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]: ...


@runtime_checkable
class MortalEngine(Protocol):
    """An engine that can die under the service (vLLM's engine core): `dead` is set when it has, and
    the service then reports NOT_SERVING and exits so its supervisor restarts it."""

    dead: asyncio.Event


def render_chat(messages: Sequence[ChatTurn]) -> str:
    """A plain chat template for engines without a tokenizer of their own (the simulator)."""
    parts = [f"<|{m.role}|>\n{m.content}\n" for m in messages]
    parts.append("<|assistant|>\n")
    return "".join(parts)
