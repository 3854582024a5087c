"""A small stand-in for vLLM's AsyncLLM (vLLM cannot be installed here: no GPU, several GB).

It keeps to the documented surface VllmEngine relies on: `AsyncLLM.generate(prompt, sampling_params,
request_id, *, trace_headers=...)` is an async generator of `RequestOutput`s (with
`RequestOutputKind.DELTA`, each `outputs[0]` holds only the new text and token ids), `abort(request_id)`,
`get_tokenizer()` with `apply_chat_template`, `model_config.max_model_len` and `shutdown()`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from aftershock.inference.vllm_engine import VllmEngine


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool


class SamplingParams:
    """Keeps its keyword arguments; validates eagerly like vLLM's (ValueError)."""

    def __init__(self, **kwargs: Any) -> None:
        temperature = kwargs.get("temperature")
        if temperature is not None and temperature < 0:
            raise ValueError(f"temperature must be non-negative, got {temperature}.")
        self.kwargs = kwargs


class Tokenizer:
    def __init__(self) -> None:
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> str:
        self.calls.append((conversation, kwargs))
        turns = "".join(f"[{m['role']}]{m['content']}" for m in conversation)
        return turns + ("[assistant]" if kwargs.get("add_generation_prompt") else "")


@dataclass
class GenerateCall:
    prompt: Any
    params: SamplingParams
    request_id: str
    trace_headers: Mapping[str, str] | None


@dataclass
class FakeAsyncLLM:
    """Streams `pieces` (text per step, one token each) `delay_s` apart; may fail at step `fail_at`."""

    pieces: tuple[str, ...] = (" Hello", " there", ",", " friend")
    delay_s: float = 0.0
    fail_at: int | None = None
    failure: BaseException | None = None
    finish_reason: str = "length"
    max_model_len: int = 2048
    calls: list[GenerateCall] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shut_down: bool = False
    tokenizer: Tokenizer = field(default_factory=Tokenizer)

    def __post_init__(self) -> None:
        self.model_config = SimpleNamespace(max_model_len=self.max_model_len)

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[RequestOutput, None]:
        self.calls.append(GenerateCall(prompt, sampling_params, request_id, trace_headers))
        assert sampling_params.kwargs["output_kind"] is RequestOutputKind.DELTA
        try:
            for i, text in enumerate(self.pieces):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if i == self.fail_at:
                    assert self.failure is not None
                    raise self.failure
                last = i == len(self.pieces) - 1
                yield RequestOutput(
                    request_id=request_id,
                    prompt=prompt,
                    prompt_token_ids=[1, 2, 3],
                    prompt_logprobs=None,
                    outputs=[
                        CompletionOutput(
                            0, text, [100 + i], finish_reason=self.finish_reason if last else None
                        )
                    ],
                    finished=last,
                )
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id: str | Iterable[str]) -> None:
        self.aborted.append(request_id if isinstance(request_id, str) else ",".join(request_id))

    async def get_tokenizer(self) -> Tokenizer:
        return self.tokenizer

    def shutdown(self) -> None:
        self.shut_down = True


async def started_engine(
    fake: FakeAsyncLLM, served_name: str | None = None
) -> tuple[VllmEngine, list[dict[str, Any]]]:
    """A VllmEngine over `fake`, started; also returns the engine arguments the factory received."""
    made: list[dict[str, Any]] = []

    def make_engine(kwargs: dict[str, Any]) -> FakeAsyncLLM:
        made.append(kwargs)
        return fake

    engine = VllmEngine(
        {"model": "org/model-7b", "tensor_parallel_size": 1},
        served_name,
        factories=(make_engine, SamplingParams, RequestOutputKind.DELTA),
    )
    await engine.start()
    return engine, made
