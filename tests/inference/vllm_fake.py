"""A stand-in for vLLM's AsyncLLM, built from vLLM's own types wherever they import without a GPU.

With vllm installed (the contract lane, scripts/vllm-contract.sh) the requests and outputs the engine
exchanges with this double are vLLM's real `SamplingParams` (which validates as vLLM does),
`RequestOutputKind`, `RequestOutput`, `CompletionOutput` and the exception classes of
`vllm.exceptions` and `vllm.v1.engine.exceptions`; only the GPU-bound AsyncLLM is simulated, and the
contract lane checks its methods against the real class's. In the normal lane (no vllm) the same
names fall back to `vllm_shapes`, minimal copies of those shapes, so the suite still runs;
`REAL_VLLM` says which is in use.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aftershock.inference.vllm_api import VllmApi, VllmErrors
from aftershock.inference.vllm_engine import VllmEngine

try:
    from vllm.exceptions import (
        GenerationError,
        GracefulHTTPError,
        QueueOverflowError,
        RetryableRequestError,
        VLLMClientError,
        VLLMNotFoundError,
        VLLMValidationError,
    )
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    REAL_VLLM = True
except ImportError:  # the normal lane: vllm is not installed
    from tests.inference.vllm_shapes import (  # type: ignore[assignment]
        CompletionOutput,
        EngineDeadError,
        EngineGenerateError,
        GenerationError,
        GracefulHTTPError,
        QueueOverflowError,
        RequestOutput,
        RequestOutputKind,
        RetryableRequestError,
        SamplingParams,
        VLLMClientError,
        VLLMNotFoundError,
        VLLMValidationError,
    )

    REAL_VLLM = False

__all__ = [
    "REAL_VLLM",
    "CompletionOutput",
    "EngineDeadError",
    "EngineGenerateError",
    "FakeAsyncLLM",
    "GenerationError",
    "GracefulHTTPError",
    "QueueOverflowError",
    "RequestOutput",
    "RequestOutputKind",
    "RetryableRequestError",
    "SamplingParams",
    "Tokenizer",
    "VLLMClientError",
    "VLLMNotFoundError",
    "VLLMValidationError",
    "fake_api",
    "started_engine",
]

ERRORS = VllmErrors(
    client=VLLMClientError,
    graceful_http=GracefulHTTPError,
    retryable=RetryableRequestError,
    generation=GenerationError,
    engine_generate=EngineGenerateError,
    engine_dead=EngineDeadError,
)

BOS = 1


class Tokenizer:
    """A word-level tokenizer with a chat template holding its own BOS, like Llama's: "<s>" is BOS."""

    def __init__(self, chat_template: str | None = "<s>{turns}[assistant]") -> None:
        self.chat_template = chat_template
        self.vocab: dict[str, int] = {"<s>": BOS}

    def _id(self, word: str) -> int:
        return self.vocab.setdefault(word, len(self.vocab) + 1)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self._id(w) for w in text.replace("<s>", " <s> ").split()]
        return [BOS, *ids] if add_special_tokens else ids

    def apply_chat_template(self, messages: list[Any], **kwargs: Any) -> str:
        assert kwargs == {"tokenize": False, "add_generation_prompt": True}, kwargs
        assert self.chat_template is not None
        turns = " ".join(f"[{m['role']}] {m['content']}" for m in messages)
        return self.chat_template.format(turns=turns + " ")


@dataclass
class ModelConfig:
    max_model_len: int
    generation_config: dict[str, Any]

    def get_diff_sampling_param(self) -> dict[str, Any]:
        return dict(self.generation_config)


@dataclass
class GenerateCall:
    prompt: Any
    params: Any
    request_id: str
    trace_headers: Mapping[str, str] | None


@dataclass
class FakeAsyncLLM:
    """Streams `pieces` (one token each; None: " t0", " t1", ... up to max_tokens) `delay_s` apart.

    Finishes with "length" at max_tokens, else with `finish_reason` after the last piece; raises
    `failure` at step `fail_at`. An EngineDeadError failure also marks the engine errored, as vLLM's
    output handler does.
    """

    pieces: tuple[str, ...] | None = (" Hello", " there", ",", " friend")
    delay_s: float = 0.0
    fail_at: int | None = None
    failure: BaseException | None = None
    finish_reason: str = "length"
    max_model_len: int = 2048
    generation_config: dict[str, Any] = field(default_factory=dict)
    tracing: bool = False
    tokenizer: Any = field(default_factory=Tokenizer)
    calls: list[GenerateCall] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    shut_down: bool = False
    dead: bool = False

    def __post_init__(self) -> None:
        self.model_config = ModelConfig(self.max_model_len, self.generation_config)

    async def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str,
        *,
        trace_headers: Mapping[str, str] | None = None,
        priority: int = 0,
    ) -> AsyncGenerator[Any, None]:
        self.calls.append(GenerateCall(prompt, sampling_params, request_id, trace_headers))
        assert isinstance(sampling_params, SamplingParams)
        assert sampling_params.output_kind is RequestOutputKind.DELTA
        if self.dead:
            raise EngineDeadError()
        # vLLM also takes a text prompt (deprecated in 0.33) and tokenizes it itself.
        if isinstance(prompt, dict):
            prompt_ids = list(prompt["prompt_token_ids"])
        else:
            prompt_ids = self.tokenizer.encode(prompt)
        limit = sampling_params.max_tokens
        pieces = self.pieces
        try:
            i = 0
            while True:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if i == self.fail_at:
                    assert self.failure is not None
                    if isinstance(self.failure, EngineDeadError):
                        self.dead = True
                    raise self.failure
                text = pieces[i] if pieces is not None else f" t{i}"
                at_limit = limit is not None and i + 1 >= limit
                exhausted = pieces is not None and i == len(pieces) - 1
                finish = "length" if at_limit else (self.finish_reason if exhausted else None)
                yield RequestOutput(
                    request_id,
                    None,
                    prompt_ids,
                    None,
                    [CompletionOutput(0, text, [100 + i], None, None, finish_reason=finish)],
                    finish is not None,
                )
                if finish is not None:
                    return
                i += 1
        finally:
            self.closed.append(request_id)

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None:
        self.aborted.append(request_id if isinstance(request_id, str) else ",".join(request_id))

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    async def is_tracing_enabled(self) -> bool:
        return self.tracing

    @property
    def errored(self) -> bool:
        return self.dead

    def shutdown(self, timeout: float | None = None) -> None:
        self.shut_down = True


def fake_api(fake: FakeAsyncLLM, made: list[dict[str, Any]], batch_invariant: bool = False) -> VllmApi:
    def make_engine(kwargs: dict[str, Any]) -> FakeAsyncLLM:
        made.append(kwargs)
        return fake

    return VllmApi(make_engine, SamplingParams, RequestOutputKind.DELTA, ERRORS, batch_invariant)


async def started_engine(
    fake: FakeAsyncLLM, served_name: str | None = None, *, batch_invariant: bool = False
) -> tuple[VllmEngine, list[dict[str, Any]]]:
    """A VllmEngine over `fake`, started; also returns the engine arguments the factory received."""
    made: list[dict[str, Any]] = []
    engine = VllmEngine(
        {"model": "org/model-7b", "tensor_parallel_size": 1},
        served_name,
        api=fake_api(fake, made, batch_invariant),
        watch_interval_s=0.01,
    )
    await engine.start()
    return engine, made
