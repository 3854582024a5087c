"""The part of vLLM the `vllm` engine uses, declared once.

`AsyncLLMLike`, `ModelConfigLike` and `TokenizerLike` are the whole surface the engine touches:
mypy holds the engine to them, and the contract lane (tests/inference/test_vllm_contract.py, run
against the pinned vllm by scripts/vllm-contract.sh) reads the real classes with `inspect` and checks
each member declared here exists with the same parameters and the same sync/async kind. So a
method vLLM makes sync (get_tokenizer() in 0.33) fails CI instead of the replica's start.

`VllmApi` bundles the real classes the engine builds requests from and maps errors by; the engine
takes it as a seam, and the test double fills it with vLLM's own types wherever they import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class ModelConfigLike(Protocol):
    """vllm.config.ModelConfig, as far as the engine reads it."""

    max_model_len: int

    def get_diff_sampling_param(self) -> dict[str, Any]: ...


class TokenizerLike(Protocol):
    """vllm.tokenizers.TokenizerLike (a transformers tokenizer in 0.33), as far as the engine uses it."""

    chat_template: Any

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def apply_chat_template(self, messages: list[Any], **kwargs: Any) -> Any: ...


class AsyncLLMLike(Protocol):
    """vllm.v1.engine.async_llm.AsyncLLM (alias AsyncLLMEngine), as far as the engine uses it."""

    model_config: ModelConfigLike

    def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str,
        *,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str | Iterable[str], internal: bool = False) -> None: ...

    def get_tokenizer(self) -> TokenizerLike: ...

    async def is_tracing_enabled(self) -> bool: ...

    @property
    def errored(self) -> bool: ...

    def shutdown(self, timeout: float | None = None) -> None: ...


# Which protocol stands for which class of the installed vllm (module, class name).
CONTRACT: tuple[tuple[type, str, str], ...] = (
    (AsyncLLMLike, "vllm.v1.engine.async_llm", "AsyncLLM"),
    (ModelConfigLike, "vllm.config", "ModelConfig"),
)


@dataclass(frozen=True)
class VllmErrors:
    """vLLM's exception classes the engine maps to gRPC codes (vllm.exceptions and
    vllm.v1.engine.exceptions)."""

    client: type[BaseException]  # VLLMClientError: validation, not found, template resolution
    graceful_http: type[BaseException]  # GracefulHTTPError: carries its own http_status (queue full)
    retryable: type[BaseException]  # RetryableRequestError
    generation: type[BaseException]  # GenerationError (a 500)
    engine_generate: type[BaseException]  # EngineGenerateError: generate() failed, engine alive
    engine_dead: type[BaseException]  # EngineDeadError: the engine core is gone


@dataclass(frozen=True)
class VllmApi:
    make_engine: Callable[[dict[str, Any]], AsyncLLMLike]
    sampling_params: Callable[..., Any]
    delta: Any  # RequestOutputKind.DELTA
    errors: VllmErrors
    # vLLM's own reading of VLLM_BATCH_INVARIANT: outputs independent of batch composition.
    batch_invariant: bool


def real_api() -> VllmApi:
    """The installed vllm (imported here only: the package installs and runs without it)."""
    from vllm import envs
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.exceptions import GenerationError, GracefulHTTPError, RetryableRequestError, VLLMClientError
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    def make_engine(kwargs: dict[str, Any]) -> AsyncLLMLike:
        engine: AsyncLLMLike = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        return engine

    return VllmApi(
        make_engine=make_engine,
        sampling_params=SamplingParams,
        delta=RequestOutputKind.DELTA,
        errors=VllmErrors(
            client=VLLMClientError,
            graceful_http=GracefulHTTPError,
            retryable=RetryableRequestError,
            generation=GenerationError,
            engine_generate=EngineGenerateError,
            engine_dead=EngineDeadError,
        ),
        batch_invariant=bool(envs.VLLM_BATCH_INVARIANT),
    )
