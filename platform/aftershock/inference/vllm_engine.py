"""vLLM's AsyncLLM in-process, behind the Engine protocol (the `vllm` extra, GPU nodes).

vLLM is imported only when this engine starts, so the package installs and runs without it.
Outputs use RequestOutputKind.DELTA: each RequestOutput carries only what is new, which is what
our "every ready token in one message" contract wants. Closing the iterator aborts the request in
the engine (vLLM's generate() aborts on GeneratorExit too; we also call abort() explicitly so a
cancelled consumer never leaves work behind).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from opentelemetry import propagate
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import REGISTRY, Collector

from aftershock import errors
from aftershock.inference.engine import EngineOutput, EngineRequest, FinishReason, ModelSpec

log = logging.getLogger(__name__)


class AsyncLLMLike(Protocol):
    """The part of vllm.AsyncLLM (alias AsyncLLMEngine) this adapter relies on."""

    model_config: Any

    def generate(
        self,
        prompt: Any,
        sampling_params: Any,
        request_id: str,
        *,
        trace_headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Any]: ...

    async def abort(self, request_id: str | Iterable[str]) -> None: ...

    async def get_tokenizer(self) -> Any: ...

    def shutdown(self) -> None: ...


EngineFactory = Callable[[dict[str, Any]], AsyncLLMLike]
SamplingFactory = Callable[..., Any]


def _vllm_factories() -> tuple[EngineFactory, SamplingFactory, Any]:
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    def make_engine(kwargs: dict[str, Any]) -> AsyncLLMLike:
        engine: AsyncLLMLike = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
        return engine

    return make_engine, SamplingParams, RequestOutputKind.DELTA


class VllmMetricsBridge(Collector):
    """vLLM registers its own vllm:* metrics on prometheus_client's global registry; re-expose them
    on this service's registry so /metrics shows the same names as the simulator's."""

    def collect(self) -> Iterable[Metric]:
        for metric in REGISTRY.collect():
            if metric.name.startswith("vllm:"):
                yield metric


_FINISH: dict[str | None, FinishReason] = {"stop": "stop", "length": "length", "abort": "abort"}


class VllmEngine:
    kind = "vllm"
    # Only with batch invariance does vLLM reproduce a seeded stream exactly; not assumed.
    reproducible = False

    def __init__(
        self,
        engine_args: dict[str, Any],
        served_model_name: str | None,
        *,
        factories: tuple[EngineFactory, SamplingFactory, Any] | None = None,
    ) -> None:
        if "model" not in engine_args:
            raise ValueError("vllm_engine_args must name a model")
        self._args = dict(engine_args)
        self._name = served_model_name or str(engine_args["model"])
        self._factories = factories
        self._engine: AsyncLLMLike | None = None
        self._tokenizer: Any = None
        self._max_model_len = 0
        self._delta: Any = None
        self._sampling: SamplingFactory | None = None

    @classmethod
    def from_settings(cls, settings: Any, registry: CollectorRegistry) -> VllmEngine:
        registry.register(VllmMetricsBridge())
        return cls(settings.vllm_engine_args, settings.vllm_served_model_name)

    async def start(self) -> None:
        make_engine, self._sampling, self._delta = self._factories or _vllm_factories()
        self._engine = make_engine(self._args)
        self._tokenizer = await self._engine.get_tokenizer()
        self._max_model_len = int(self._engine.model_config.max_model_len)
        log.info("vllm engine ready", extra={"model": self._name, "max_model_len": self._max_model_len})

    async def stop(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def models(self) -> Sequence[ModelSpec]:
        return [ModelSpec(self._name, self._max_model_len, self._max_model_len, self.kind)]

    def _prompt(self, request: EngineRequest) -> str:
        if request.messages is not None:
            turns = [{"role": m.role, "content": m.content} for m in request.messages]
            prompt: str = self._tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=True
            )
            return prompt
        if request.prompt is None:
            raise errors.InvalidArgument("A prompt or chat messages are required.", param="prompt")
        return request.prompt

    def _sampling_params(self, request: EngineRequest) -> Any:
        assert self._sampling is not None
        kwargs: dict[str, Any] = {"output_kind": self._delta, "stop": list(request.stop) or None}
        if request.max_tokens:
            kwargs["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            kwargs["temperature"] = request.temperature
        if request.top_p is not None:
            kwargs["top_p"] = request.top_p
        if request.seed is not None:
            kwargs["seed"] = request.seed
        try:
            return self._sampling(**kwargs)
        except ValueError as exc:  # vLLM validates sampling parameters eagerly
            raise errors.InvalidArgument(str(exc)) from None

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._engine is None:
            raise errors.Unavailable("The vLLM engine is not running.", retry_after_s=5.0)
        if request.model != self._name:
            raise errors.ModelNotFound(request.model)
        if request.max_tokens > self._max_model_len:
            raise errors.InvalidArgument(
                f"max_tokens is {request.max_tokens}, above this model's limit of {self._max_model_len}.",
                param="max_tokens",
            )
        return self._stream(self._engine, request, self._prompt(request), self._sampling_params(request))

    async def _stream(
        self, engine: AsyncLLMLike, request: EngineRequest, prompt: str, params: Any
    ) -> AsyncIterator[EngineOutput]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # W3C traceparent, so vLLM's own spans join our trace
        arrival = time.monotonic()
        first_at = 0.0
        completion = 0
        finished = False
        outputs = engine.generate(prompt, params, request.request_id, trace_headers=carrier or None)
        pending = outputs.__aiter__()
        # The loop's deadline (monotonic, like request.deadline) around each wait for the engine only,
        # never across our yield: a consumer busy with a slow write must not be cancelled by it.
        loop_deadline = (
            None
            if request.deadline is None
            else asyncio.get_running_loop().time() + (request.deadline - time.monotonic())
        )
        try:
            while True:
                async with asyncio.timeout_at(loop_deadline):
                    try:
                        out = await pending.__anext__()
                    except StopAsyncIteration:
                        break
                choice = out.outputs[0]
                completion += len(choice.token_ids)
                if completion and not first_at:
                    first_at = time.monotonic()
                finish = _FINISH.get(choice.finish_reason) if out.finished else None
                result = EngineOutput(
                    [choice.text] if choice.text else [],
                    len(out.prompt_token_ids or ()),
                    completion,
                    finish,
                )
                if finish is not None:
                    finished = True
                    now = time.monotonic()
                    result.ttft_s = (first_at or now) - arrival
                    result.e2e_s = now - arrival
                yield result
                if finished:
                    return
        except TimeoutError:
            raise errors.DeadlineExceeded("The request's deadline passed during generation.") from None
        except ValueError as exc:  # vLLM's request validation errors subclass ValueError
            raise errors.InvalidArgument(str(exc)) from None
        except RuntimeError as exc:  # EngineDeadError / EngineGenerateError
            log.error("vllm engine failed", extra={"error": type(exc).__name__})
            raise errors.Unavailable("The vLLM engine failed.", retry_after_s=5.0) from None
        finally:
            if not finished:
                await engine.abort(request.request_id)
            aclose = getattr(outputs, "aclose", None)
            if aclose is not None:
                await aclose()
