"""Minimal copies of vLLM 0.33's request/output shapes and exception classes, for the normal lane only.

vllm_fake.py uses vLLM's real types whenever vllm imports; these stand in where it is not installed
(the newcomer's default test command). They keep the constructors' argument order, the attribute
names, the exception hierarchy (VLLMError is *not* a ValueError/RuntimeError) and SamplingParams'
eager validation and default of 16 tokens; test_vllm_contract.py checks them against the real ones.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any


class RequestOutputKind(enum.Enum):
    CUMULATIVE = 0
    DELTA = 1
    FINAL_ONLY = 2


class SamplingParams:
    """Attributes as vLLM's (defaults included); raises VLLMValidationError like its _verify_args."""

    def __init__(
        self,
        *,
        max_tokens: int | None = 16,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        repetition_penalty: float = 1.0,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE,
    ) -> None:
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.min_p = min_p
        self.seed = seed
        self.stop = stop or []
        self.repetition_penalty = repetition_penalty
        self.presence_penalty = presence_penalty
        self.frequency_penalty = frequency_penalty
        self.output_kind = output_kind
        if temperature < 0:
            raise VLLMValidationError(
                f"temperature must be non-negative, got {temperature}.",
                parameter="temperature",
                value=temperature,
            )
        if not 0 < top_p <= 1:
            raise VLLMValidationError(
                f"top_p must be in (0, 1], got {top_p}.", parameter="top_p", value=top_p
            )
        if max_tokens is not None and max_tokens < 1:
            raise VLLMValidationError(
                f"max_tokens must be at least 1, got {max_tokens}.", parameter="max_tokens", value=max_tokens
            )


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: Any
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class RequestOutput:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int] | None,
        prompt_logprobs: Any,
        outputs: list[CompletionOutput],
        finished: bool,
        metrics: Any = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.prompt_logprobs = prompt_logprobs
        self.outputs = outputs
        self.finished = finished
        self.metrics = metrics


class VLLMError(Exception):
    pass


class VLLMClientError(VLLMError):
    pass


class VLLMServerError(VLLMError):
    pass


class VLLMValidationError(VLLMClientError):
    def __init__(self, message: str, *, parameter: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.value = value


class VLLMNotFoundError(VLLMClientError):
    pass


class GenerationError(VLLMServerError):
    def __init__(self, message: str = "Internal server error") -> None:
        super().__init__(message)
        self.status_code = HTTPStatus.INTERNAL_SERVER_ERROR


class RetryableRequestError(GenerationError):
    def __init__(self, message: str = "Request failed; please retry") -> None:
        super().__init__(message)
        self.status_code = HTTPStatus.SERVICE_UNAVAILABLE


class GracefulHTTPError(VLLMError):
    def __init__(self, message: str, http_status: HTTPStatus) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status


class QueueOverflowError(GracefulHTTPError):
    def __init__(self) -> None:
        super().__init__(
            "The engine is currently busy and cannot accept new requests.", HTTPStatus.SERVICE_UNAVAILABLE
        )


class EngineGenerateError(VLLMServerError):
    pass


class EngineDeadError(VLLMServerError):
    def __init__(self, *args: Any, suppress_context: bool = False, **kwargs: Any) -> None:
        super().__init__(
            "EngineCore encountered an issue. See stack trace (above) for the root cause.", *args, **kwargs
        )
        self.__suppress_context__ = suppress_context
