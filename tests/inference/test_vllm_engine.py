"""VllmEngine through its `api=` seam, over the double in vllm_fake.py (vLLM's real types where vllm
is installed: the contract lane runs this file too)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import pytest
from aftershock import errors
from aftershock.edge.errors import HTTP_STATUS
from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.vllm_engine import VllmEngine, VllmMetricsBridge
from aftershock.metrics import new_registry
from aftershock.metrics_http import render
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, Counter, Gauge, generate_latest

from tests.inference import vllm_fake as v
from tests.inference.vllm_fake import BOS, FakeAsyncLLM, RequestOutputKind, Tokenizer
from tests.inference.vllm_fake import started_engine as started


def request(**kw: Any) -> EngineRequest:
    base: dict[str, Any] = {"request_id": "req-7", "model": "org/model-7b", "max_tokens": 16, "prompt": "Hi"}
    base.update(kw)
    return EngineRequest(**base)


async def drain(it: AsyncIterator[EngineOutput]) -> list[EngineOutput]:
    return [out async for out in it]


async def test_start_learns_the_model_and_hands_vllm_the_served_name() -> None:
    fake = FakeAsyncLLM(max_model_len=4096)
    engine, made = await started(fake, served_name="served")
    # The served name reaches vLLM, so its vllm:* series carry the name the registry routes.
    assert made == [{"model": "org/model-7b", "tensor_parallel_size": 1, "served_model_name": "served"}]
    [spec] = engine.models()
    assert (spec.name, spec.max_model_len, spec.max_output_tokens) == ("served", 4096, 4096)
    assert spec.engine == "vllm"
    await engine.stop()
    assert fake.shut_down
    with pytest.raises(errors.Unavailable):
        engine.generate(request(model="served"))


async def test_reproducible_only_with_batch_invariance() -> None:
    plain, _ = await started(FakeAsyncLLM())
    invariant, _ = await started(FakeAsyncLLM(), batch_invariant=True)
    assert (plain.reproducible, invariant.reproducible) == (False, True)


async def test_stream_uses_delta_outputs_and_passes_sampling_params() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    outs = await drain(engine.generate(request(temperature=0.5, top_p=0.9, seed=42, stop=("\n\n",))))
    [call] = fake.calls
    assert call.prompt == {"prompt_token_ids": [BOS, fake.tokenizer.vocab["Hi"]]}
    p = call.params
    assert isinstance(p, v.SamplingParams) and p.output_kind is RequestOutputKind.DELTA
    assert (p.max_tokens, p.temperature, p.top_p, p.seed, p.stop) == (16, 0.5, 0.9, 42, ["\n\n"])
    assert [o.tokens for o in outs] == [[" Hello"], [" there"], [","], [" friend"]]
    assert [o.completion_tokens for o in outs] == [1, 2, 3, 4]
    assert all(o.prompt_tokens == 2 for o in outs)
    assert [o.finish_reason for o in outs] == [None, None, None, "length"]
    assert outs[-1].e2e_s >= outs[-1].ttft_s >= 0
    assert fake.aborted == []  # a finished request is not aborted
    assert fake.closed == [call.request_id]


async def test_without_max_tokens_the_rest_of_the_context_is_available() -> None:
    fake = FakeAsyncLLM(pieces=None, max_model_len=64)
    engine, _ = await started(fake)
    outs = await drain(engine.generate(request(max_tokens=0)))
    # 64 - 2 prompt tokens, not SamplingParams' default of 16.
    assert fake.calls[0].params.max_tokens == 62
    assert outs[-1].completion_tokens == 62 and outs[-1].finish_reason == "length"
    # A prompt that fills the context is refused before it reaches vLLM.
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(max_tokens=0, prompt=" ".join(["w"] * 63)))
    assert info.value.param == "prompt" and len(fake.calls) == 1


async def test_generation_config_defaults_apply_like_vllm_serve() -> None:
    fake = FakeAsyncLLM(generation_config={"temperature": 0.6, "top_k": 20, "max_tokens": 40})
    engine, _ = await started(fake)
    await drain(engine.generate(request(max_tokens=0)))
    await drain(engine.generate(request(max_tokens=8, temperature=0.2)))
    default, explicit = (c.params for c in fake.calls)
    assert (default.temperature, default.top_k, default.max_tokens) == (0.6, 20, 40)
    assert (explicit.temperature, explicit.top_k, explicit.max_tokens) == (0.2, 20, 8)


async def test_chat_goes_through_the_chat_template_with_one_bos() -> None:
    fake = FakeAsyncLLM(finish_reason="stop")
    engine, _ = await started(fake)
    turns = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hello"))
    outs = await drain(engine.generate(request(prompt=None, messages=turns)))
    text = "<s>[system] Be brief. [user] Hello [assistant]"
    expected = fake.tokenizer.encode(text, add_special_tokens=False)
    assert fake.calls[0].prompt == {"prompt_token_ids": expected}
    assert expected[0] == BOS and expected.count(BOS) == 1
    assert outs[-1].finish_reason == "stop"


async def test_a_model_without_a_chat_template_refuses_chat_with_invalid_argument() -> None:
    fake = FakeAsyncLLM(tokenizer=Tokenizer(chat_template=None))
    engine, _ = await started(fake)
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(prompt=None, messages=(ChatTurn("user", "Hello"),)))
    assert info.value.param == "messages" and "chat template" in info.value.message
    assert HTTP_STATUS.get(info.value.code) == 400
    assert fake.calls == []


async def test_chat_with_a_real_tokenizer_and_template() -> None:
    """A tiny tokenizer built here with `tokenizers`, wrapped by transformers with a Llama-style chat
    template that writes its own BOS: the engine sends exactly the template's ids, BOS once."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    words = ["<s>", "</s>", "[INST]", "[/INST]", "Hello", "Be", "brief.", "<unk>"]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>")
    raw = tokenizers.Tokenizer(model)
    raw.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 0)]
    )
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
        "{% else %} {{ m['content'] }} {% endif %}{% endfor %}"
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template
    )
    fake = FakeAsyncLLM(tokenizer=tok)
    engine, _ = await started(fake)
    turns = [{"role": "user", "content": "Hello"}]
    expected = tok.apply_chat_template(turns, tokenize=True, add_generation_prompt=True, return_dict=False)
    await drain(engine.generate(request(prompt=None, messages=(ChatTurn("user", "Hello"),))))
    assert fake.calls[0].prompt == {"prompt_token_ids": list(expected)}
    assert list(expected) == [0, 2, 4, 3] and list(expected).count(0) == 1
    # A text prompt gets the tokenizer's BOS from its special tokens.
    await drain(engine.generate(request(prompt="Hello")))
    assert fake.calls[1].prompt == {"prompt_token_ids": [0, 4]}


async def test_closing_early_aborts_by_its_own_id_not_the_clients() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(50)))
    engine, _ = await started(fake)
    # Two clients that happen to send the same x-request-id.
    first = cast(AsyncGenerator[EngineOutput, None], engine.generate(request()))
    second = cast(AsyncGenerator[EngineOutput, None], engine.generate(request()))
    assert (await first.__anext__()).tokens == [" t0"]
    assert (await second.__anext__()).tokens == [" t0"]
    await first.aclose()
    ids = [c.request_id for c in fake.calls]
    assert ids[0] != ids[1] and all(i.startswith("req-7-") for i in ids)
    assert fake.aborted == [ids[0]]  # never "req-7", which would abort the other client's request
    assert fake.closed == [ids[0]]
    rest = await drain(second)  # the other client's request runs to its end
    assert (rest[-1].completion_tokens, rest[-1].finish_reason) == (16, "length")


async def test_deadline_aborts_and_raises_deadline_exceeded() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(100)), delay_s=0.02)
    engine, _ = await started(fake)
    started_at = time.monotonic()
    got: list[EngineOutput] = []
    with pytest.raises(errors.DeadlineExceeded):
        async for out in engine.generate(request(max_tokens=200, deadline=started_at + 0.15)):
            got.append(out)
    assert 0.1 < time.monotonic() - started_at < 1.0
    assert 0 < len(got) < 100
    assert fake.aborted == [fake.calls[0].request_id]


async def test_deadline_while_the_consumer_is_busy_does_not_cancel_the_consumer() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(100)), delay_s=0.01)
    engine, _ = await started(fake)
    it = engine.generate(request(max_tokens=200, deadline=time.monotonic() + 0.1))
    await it.__anext__()
    await asyncio.sleep(0.3)  # the consumer's own work; must not be cancelled by the engine
    with pytest.raises(errors.DeadlineExceeded):
        await it.__anext__()
    assert fake.aborted == [fake.calls[0].request_id]


async def test_request_validation() -> None:
    fake = FakeAsyncLLM(max_model_len=128)
    engine, _ = await started(fake)
    with pytest.raises(errors.ModelNotFound):
        engine.generate(request(model="other"))
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(max_tokens=129))
    assert info.value.param == "max_tokens"
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(prompt=None))
    assert info.value.param == "prompt"
    assert fake.calls == []


def test_engine_args_must_name_a_model() -> None:
    with pytest.raises(ValueError):
        VllmEngine({"tensor_parallel_size": 1}, None)


@pytest.mark.parametrize("tracing", [True, False])
async def test_trace_headers_reach_vllm_only_when_its_tracing_is_on(tracing: bool) -> None:
    fake = FakeAsyncLLM(tracing=tracing)
    engine, _ = await started(fake)
    await drain(engine.generate(request(request_id="untraced")))
    assert fake.calls[0].trace_headers is None  # no active span: nothing to propagate
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("inference") as span:
        await drain(engine.generate(request(request_id="traced")))
    headers = fake.calls[1].trace_headers
    if not tracing:  # vLLM would drop them with a warning per request
        assert headers is None
        return
    assert headers is not None
    ctx = span.get_span_context()
    assert headers["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def test_metrics_bridge_re_exposes_vllm_metrics() -> None:
    running = Gauge("vllm:num_requests_running", "Running.", ["model_name", "engine"], registry=REGISTRY)
    tokens = Counter("vllm:generation_tokens", "Tokens.", ["model_name", "engine"], registry=REGISTRY)
    other = Gauge("aftershock_test_not_vllm", "Not bridged.", registry=REGISTRY)
    try:
        running.labels("org/model-7b", "0").set(3)
        tokens.labels("org/model-7b", "0").inc(12)
        registry = new_registry()
        VllmEngine.from_settings(
            InferenceSettings(engine="vllm", vllm_engine_args={"model": "org/model-7b"}), registry
        )
        labels = {"model_name": "org/model-7b", "engine": "0"}
        assert registry.get_sample_value("vllm:num_requests_running", labels) == 3
        assert registry.get_sample_value("vllm:generation_tokens_total", labels) == 12
        assert registry.get_sample_value("aftershock_test_not_vllm") is None
        assert b"vllm:generation_tokens_total{" in generate_latest(registry)
        body, _ = render(registry, "application/openmetrics-text; version=1.0.0")
        assert b"vllm:num_requests_running{" in body  # the colon survives OpenMetrics too
        assert {m.name for m in VllmMetricsBridge().collect()} >= {"vllm:num_requests_running"}
        assert all(m.name.startswith("vllm:") for m in VllmMetricsBridge().collect())
    finally:
        for collector in (running, tokens, other):
            REGISTRY.unregister(collector)
