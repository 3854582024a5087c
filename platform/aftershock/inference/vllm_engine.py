"""vLLM's AsyncLLM in-process, behind the Engine protocol (the `vllm` extra, GPU nodes).

vLLM is imported only when this engine starts (vllm_api.real_api), so the package installs and runs
without it. What it does the way `vllm serve` does, checked against vLLM 0.33's source:
- prompts are tokenized here and reach the engine as a tokens prompt: a text prompt with the
  tokenizer's special tokens, chat messages through the tokenizer's chat template and then without
  them (the template already holds its BOS token, so none is added twice);
- a request without max_tokens may use the model's remaining context (SamplingParams would stop it
  at 16 tokens), capped by the model's generation_config default where it sets one;
- the model's generation_config defaults (temperature, top_p, ...) fill what the request leaves out;
- outputs use RequestOutputKind.DELTA: each RequestOutput holds only what is new.
Each request goes to vLLM under an id of our own: vLLM's abort(id) by external id cancels every
request sharing it, and clients' x-request-ids can collide.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from opentelemetry import propagate
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.registry import REGISTRY, Collector

from aftershock import errors
from aftershock.inference.engine import EngineOutput, EngineRequest, FinishReason, ModelSpec
from aftershock.inference.vllm_api import AsyncLLMLike, TokenizerLike, VllmApi, real_api
from aftershock.inference.vllm_errors import map_error

log = logging.getLogger(__name__)


class VllmMetricsBridge(Collector):
    """vLLM registers its own vllm:* metrics on prometheus_client's global registry; re-expose them
    on this service's registry so /metrics shows the same names as the simulator's."""

    def collect(self) -> Iterable[Metric]:
        for metric in REGISTRY.collect():
            if metric.name.startswith("vllm:"):
                yield metric


# Every finish reason vLLM 0.33 returns (vllm.v1.engine.FINISH_REASON_STRINGS).
FINISH_REASONS: dict[str | None, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "error": "error",
    "repetition": "repetition",
}
# generation_config keys `vllm serve` applies as defaults (ModelConfig.get_diff_sampling_param).
_DEFAULTED = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)


class VllmEngine:
    kind = "vllm"
    # Only with batch invariance does vLLM reproduce a seeded stream exactly; not assumed.
    reproducible = False

    def __init__(
        self,
        engine_args: dict[str, Any],
        served_model_name: str | None,
        *,
        api: VllmApi | None = None,
        watch_interval_s: float = 1.0,
    ) -> None:
        if "model" not in engine_args:
            raise ValueError("vllm_engine_args must name a model")
        self._args = dict(engine_args)
        self._name = served_model_name or str(engine_args["model"])
        if served_model_name and "served_model_name" not in self._args:
            # vLLM labels its vllm:* series with it; the registry and dashboards filter on this name.
            self._args["served_model_name"] = served_model_name
        self._api = api
        self._watch_interval_s = watch_interval_s
        self._engine: AsyncLLMLike | None = None
        self._tokenizer: TokenizerLike | None = None
        self._max_model_len = 0
        self._defaults: dict[str, Any] = {}
        self._tracing = False
        self._watch: asyncio.Task[None] | None = None
        # Set once the engine core is gone; the service then stops the replica (see service.py).
        self.dead = asyncio.Event()
        # Same seed, same text: only with vLLM's batch invariance (VLLM_BATCH_INVARIANT=1, deploy/).
        self.reproducible = False

    @classmethod
    def from_settings(cls, settings: Any, registry: CollectorRegistry) -> VllmEngine:
        registry.register(VllmMetricsBridge())
        return cls(settings.vllm_engine_args, settings.vllm_served_model_name)

    async def start(self) -> None:
        api = self._api = self._api or real_api()
        self.reproducible = api.batch_invariant
        engine = self._engine = api.make_engine(self._args)
        self._tokenizer = engine.get_tokenizer()
        self._max_model_len = int(engine.model_config.max_model_len)
        diff = engine.model_config.get_diff_sampling_param()
        self._defaults = {k: diff[k] for k in (*_DEFAULTED, "max_tokens") if diff.get(k) is not None}
        self._tracing = await engine.is_tracing_enabled()
        self._watch = asyncio.create_task(self._watch_engine(engine))
        log.info(
            "vllm engine ready",
            extra={
                "model": self._name,
                "max_model_len": self._max_model_len,
                "reproducible": self.reproducible,
                "defaults": sorted(self._defaults),
            },
        )

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    async def _watch_engine(self, engine: AsyncLLMLike) -> None:
        """An idle engine core can die too (a GPU fault): notice without waiting for a request."""
        while not self.dead.is_set():
            if engine.errored:
                self._died("engine core reported errored")
                return
            await asyncio.sleep(self._watch_interval_s)

    def _died(self, why: str) -> None:
        if not self.dead.is_set():
            log.error("vllm engine dead", extra={"reason": why})
            self.dead.set()

    def models(self) -> Sequence[ModelSpec]:
        return [ModelSpec(self._name, self._max_model_len, self._max_model_len, self.kind)]

    def _prompt_ids(self, request: EngineRequest) -> list[int]:
        tokenizer = self._tokenizer
        assert tokenizer is not None
        if request.messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise errors.InvalidArgument(
                    f"The model '{self._name}' has no chat template; use the completions API.",
                    param="messages",
                )
            turns = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except Exception as exc:  # the template's own checks (role order, ...) raise from Jinja
                raise errors.InvalidArgument(
                    f"The chat template rejected the messages: {exc}", param="messages"
                ) from None
            # The template holds the BOS token where the model wants one: add no special tokens.
            return list(tokenizer.encode(str(text), add_special_tokens=False))
        if request.prompt is None:
            raise errors.InvalidArgument("A prompt or chat messages are required.", param="prompt")
        return list(tokenizer.encode(request.prompt, add_special_tokens=True))

    def _sampling_params(self, request: EngineRequest, prompt_len: int) -> Any:
        api = self._api
        assert api is not None
        remaining = self._max_model_len - prompt_len
        if remaining <= 0:
            raise errors.InvalidArgument(
                f"The prompt is {prompt_len} tokens; this model's context is {self._max_model_len}.",
                param="messages" if request.messages is not None else "prompt",
            )
        # As `vllm serve`: the request's max_tokens, else the model's default, never past the context.
        wanted = request.max_tokens or self._defaults.get("max_tokens") or remaining
        kwargs: dict[str, Any] = {k: v for k, v in self._defaults.items() if k != "max_tokens"}
        kwargs.update(output_kind=api.delta, max_tokens=min(int(wanted), remaining))
        if request.stop:
            kwargs["stop"] = list(request.stop)
        for name in ("temperature", "top_p", "seed"):
            value = getattr(request, name)
            if value is not None:
                kwargs[name] = value
        try:
            return api.sampling_params(**kwargs)
        except Exception as exc:  # vLLM validates eagerly (VLLMValidationError, ValueError)
            mapped = map_error(exc, api.errors)
            if mapped is None:
                raise
            raise mapped from None

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        if self._engine is None or self.dead.is_set():
            raise errors.Unavailable("The vLLM engine is not running.", retry_after_s=5.0)
        if request.model != self._name:
            raise errors.ModelNotFound(request.model)
        if request.max_tokens > self._max_model_len:
            raise errors.InvalidArgument(
                f"max_tokens is {request.max_tokens}, above this model's limit of {self._max_model_len}.",
                param="max_tokens",
            )
        ids = self._prompt_ids(request)
        params = self._sampling_params(request, len(ids))
        return self._stream(self._engine, request, {"prompt_token_ids": ids}, params)

    async def _stream(
        self, engine: AsyncLLMLike, request: EngineRequest, prompt: dict[str, Any], params: Any
    ) -> AsyncIterator[EngineOutput]:
        api = self._api
        assert api is not None
        carrier: dict[str, str] = {}
        if self._tracing:
            propagate.inject(carrier)  # W3C traceparent, so vLLM's own spans join our trace
        # Ours, unique per try: never the client's x-request-id (see the module docstring).
        engine_id = f"{request.request_id}-{uuid.uuid4().hex[:12]}"
        arrival = time.monotonic()
        first_at = 0.0
        queue_s = 0.0
        completion = 0
        finished = False
        outputs = engine.generate(prompt, params, engine_id, trace_headers=carrier or None)
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
                    queue_s = _queue_seconds(out)
                finish = FINISH_REASONS.get(choice.finish_reason, "stop") if out.finished else None
                result = EngineOutput(
                    [choice.text] if choice.text else [],
                    len(out.prompt_token_ids or ()),
                    completion,
                    finish,
                )
                if finish is not None:
                    finished = True
                    now = time.monotonic()
                    result.queue_s = queue_s or _queue_seconds(out)
                    result.ttft_s = (first_at or now) - arrival
                    result.e2e_s = now - arrival
                yield result
                if finished:
                    return
        except TimeoutError:
            raise errors.DeadlineExceeded("The request's deadline passed during generation.") from None
        except Exception as exc:
            mapped = map_error(exc, api.errors)
            if isinstance(exc, api.errors.engine_dead):
                self._died(type(exc).__name__)
            elif mapped is not None:
                log.warning("vllm request failed", extra={"error": type(exc).__name__})
            if mapped is None:
                raise
            raise mapped from None
        finally:
            if not finished and not self.dead.is_set():
                await engine.abort(engine_id)
            aclose = getattr(outputs, "aclose", None)
            if aclose is not None:
                await aclose()


def _queue_seconds(out: Any) -> float:
    """Scheduled minus queued, from vLLM's per-request stats (engine-core monotonic clock); 0 when
    the engine keeps no stats (disable_log_stats)."""
    stats = getattr(out, "metrics", None)
    queued = float(getattr(stats, "queued_ts", 0.0) or 0.0)
    scheduled = float(getattr(stats, "scheduled_ts", 0.0) or 0.0)
    return scheduled - queued if queued and scheduled > queued else 0.0
