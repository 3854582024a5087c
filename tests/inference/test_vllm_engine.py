"""VllmEngine through its `factories=` seam, over the documented-API stand-in in vllm_fake.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import grpc
import pytest
from aftershock import errors
from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest
from aftershock.inference.settings import InferenceSettings
from aftershock.inference.vllm_engine import VllmEngine, VllmMetricsBridge
from aftershock.metrics import new_registry
from aftershock.metrics_http import render
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import REGISTRY, Counter, Gauge, generate_latest

from tests.inference.vllm_fake import FakeAsyncLLM, RequestOutputKind
from tests.inference.vllm_fake import started_engine as started


def request(**kw: Any) -> EngineRequest:
    base: dict[str, Any] = {"request_id": "req-7", "model": "org/model-7b", "max_tokens": 16, "prompt": "Hi"}
    base.update(kw)
    return EngineRequest(**base)


async def drain(it: AsyncIterator[EngineOutput]) -> list[EngineOutput]:
    return [out async for out in it]


async def test_start_learns_the_model_from_the_engine() -> None:
    fake = FakeAsyncLLM(max_model_len=4096)
    engine, made = await started(fake, served_name="served")
    assert made == [{"model": "org/model-7b", "tensor_parallel_size": 1}]
    [spec] = engine.models()
    assert (spec.name, spec.max_model_len, spec.max_output_tokens, spec.engine) == (
        "served",
        4096,
        4096,
        "vllm",
    )
    await engine.stop()
    assert fake.shut_down
    with pytest.raises(errors.Unavailable):
        engine.generate(request(model="served"))


async def test_stream_uses_delta_outputs_and_passes_sampling_params() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    outs = await drain(
        engine.generate(request(temperature=0.5, top_p=0.9, seed=42, stop=("\n\n",), max_tokens=16))
    )
    [call] = fake.calls
    assert call.prompt == "Hi" and call.request_id == "req-7"
    assert call.params.kwargs == {
        "output_kind": RequestOutputKind.DELTA,
        "stop": ["\n\n"],
        "max_tokens": 16,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 42,
    }
    assert [o.tokens for o in outs] == [[" Hello"], [" there"], [","], [" friend"]]
    assert [o.completion_tokens for o in outs] == [1, 2, 3, 4]
    assert all(o.prompt_tokens == 3 for o in outs)
    assert [o.finish_reason for o in outs] == [None, None, None, "length"]
    assert outs[-1].e2e_s >= outs[-1].ttft_s >= 0
    assert fake.aborted == []  # a finished request is not aborted
    assert fake.closed == ["req-7"]


async def test_unset_sampling_fields_are_left_to_vllm_defaults() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    await drain(engine.generate(request(max_tokens=0)))
    assert fake.calls[0].params.kwargs == {"output_kind": RequestOutputKind.DELTA, "stop": None}


async def test_chat_applies_the_tokenizers_chat_template() -> None:
    fake = FakeAsyncLLM(finish_reason="stop")
    engine, _ = await started(fake)
    turns = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hello"))
    outs = await drain(engine.generate(request(prompt=None, messages=turns)))
    [(conversation, kwargs)] = fake.tokenizer.calls
    assert conversation == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert kwargs == {"tokenize": False, "add_generation_prompt": True}
    assert fake.calls[0].prompt == "[system]Be brief.[user]Hello[assistant]"
    assert outs[-1].finish_reason == "stop"


async def test_closing_early_aborts_the_request() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(50)))
    engine, _ = await started(fake)
    it = cast(AsyncGenerator[EngineOutput, None], engine.generate(request()))
    first = await it.__anext__()
    assert first.tokens == [" t0"]
    await it.aclose()
    assert fake.aborted == ["req-7"]
    assert fake.closed == ["req-7"]  # vLLM's own generator is closed too


async def test_deadline_aborts_and_raises_deadline_exceeded() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(100)), delay_s=0.02)
    engine, _ = await started(fake)
    started_at = time.monotonic()
    got: list[EngineOutput] = []
    with pytest.raises(errors.DeadlineExceeded):
        async for out in engine.generate(request(deadline=started_at + 0.15)):
            got.append(out)
    assert 0.1 < time.monotonic() - started_at < 1.0
    assert 0 < len(got) < 100
    assert fake.aborted == ["req-7"]


async def test_deadline_while_the_consumer_is_busy_does_not_cancel_the_consumer() -> None:
    fake = FakeAsyncLLM(pieces=tuple(f" t{i}" for i in range(100)), delay_s=0.01)
    engine, _ = await started(fake)
    it = engine.generate(request(deadline=time.monotonic() + 0.1))
    await it.__anext__()
    await asyncio.sleep(0.3)  # the consumer's own work; must not be cancelled by the engine
    with pytest.raises(errors.DeadlineExceeded):
        await it.__anext__()
    assert fake.aborted == ["req-7"]


@pytest.mark.parametrize(
    ("failure", "expected", "code"),
    [
        (
            ValueError("prompt is too long for this model"),
            errors.InvalidArgument,
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (RuntimeError("EngineDeadError"), errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    ],
)
async def test_engine_errors_are_mapped(
    failure: BaseException, expected: type[errors.AftershockError], code: grpc.StatusCode
) -> None:
    fake = FakeAsyncLLM(fail_at=1, failure=failure)
    engine, _ = await started(fake)
    got: list[EngineOutput] = []
    with pytest.raises(expected) as info:
        async for out in engine.generate(request()):
            got.append(out)
    assert info.value.code == code
    assert len(got) == 1
    assert fake.aborted == ["req-7"]
    if expected is errors.InvalidArgument:
        assert info.value.message == "prompt is too long for this model"
    else:
        assert info.value.retry_after_s == 5.0
        assert "EngineDeadError" not in info.value.message  # internal detail stays in the log


async def test_invalid_sampling_params_are_invalid_argument() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(request(temperature=-1.0))
    assert "temperature" in info.value.message
    assert fake.calls == []


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


async def test_trace_headers_carry_the_active_span() -> None:
    fake = FakeAsyncLLM()
    engine, _ = await started(fake)
    await drain(engine.generate(request(request_id="untraced")))
    assert fake.calls[0].trace_headers is None  # no active span: nothing to propagate
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("inference") as span:
        await drain(engine.generate(request(request_id="traced")))
    headers = fake.calls[1].trace_headers
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
        # Only vllm:* families come through the bridge, never the global registry's own.
        assert {m.name for m in VllmMetricsBridge().collect()} >= {"vllm:num_requests_running"}
        assert all(m.name.startswith("vllm:") for m in VllmMetricsBridge().collect())
    finally:
        for collector in (running, tokens, other):
            REGISTRY.unregister(collector)
