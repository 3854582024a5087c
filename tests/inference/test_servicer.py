"""The Inference gRPC service over real loopback gRPC, with the sim engine behind it."""

from __future__ import annotations

import time

import grpc
import pytest
from aftershock.inference.engine import ChatTurn, render_chat
from aftershock.inference.sim_tokens import count_prompt_tokens, expected_text
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2, inference_pb2_grpc

from tests.inference.conftest import MODELS, PROMPT
from tests.inproc import (
    RunningInference,
    generate_request,
    trailing,
    wait_until,
)


async def test_non_stream_sends_exactly_one_message(stub: inference_pb2_grpc.InferenceStub) -> None:
    msgs = [
        m async for m in stub.Generate(generate_request("fast", PROMPT, max_tokens=40, seed=9, stream=False))
    ]
    assert len(msgs) == 1
    msg = msgs[0]
    assert "".join(msg.tokens) == expected_text("fast", PROMPT, 9, 40)
    assert len(msg.tokens) == 40
    assert msg.finish_reason == pb.FINISH_REASON_LENGTH
    assert msg.completion_tokens == 40
    assert msg.prompt_tokens == count_prompt_tokens(PROMPT)
    assert msg.timing.e2e_seconds >= msg.timing.ttft_seconds >= msg.timing.queue_seconds >= 0


async def test_stream_sends_each_ready_token_without_holding_the_first_back(
    stub: inference_pb2_grpc.InferenceStub,
) -> None:
    started = time.monotonic()
    arrivals: list[float] = []
    msgs: list[pb.GenerateResponse] = []
    async for m in stub.Generate(generate_request("paced", PROMPT, max_tokens=8, seed=2)):
        arrivals.append(time.monotonic() - started)
        msgs.append(m)
    assert "".join(t for m in msgs for t in m.tokens) == expected_text("paced", PROMPT, 2, 8)
    assert len(msgs[0].tokens) == 1
    # The first token arrives long before the stream ends (7 more tokens at 40 ms each).
    assert arrivals[-1] - arrivals[0] > 0.2
    assert [m.completion_tokens for m in msgs] == sorted(m.completion_tokens for m in msgs)
    assert [m.finish_reason for m in msgs[:-1]] == [pb.FINISH_REASON_UNSPECIFIED] * (len(msgs) - 1)
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH and msgs[-1].completion_tokens == 8


async def test_stream_interval_batches_messages(stub: inference_pb2_grpc.InferenceStub) -> None:
    request = generate_request("paced", PROMPT, max_tokens=10, seed=3, stream_interval=4)
    msgs = [m async for m in stub.Generate(request)]
    sizes = [len(m.tokens) for m in msgs]
    assert sizes[0] == 1, sizes  # the first token is never held back
    assert all(n >= 4 for n in sizes[1:-1]), sizes
    assert sum(sizes) == 10
    assert len(msgs) < 10
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH
    assert "".join(t for m in msgs for t in m.tokens) == expected_text("paced", PROMPT, 3, 10)


async def test_chat_input(stub: inference_pb2_grpc.InferenceStub) -> None:
    request = pb.GenerateRequest(
        request_id="chat-1", model="fast", sampling=pb.SamplingParams(max_tokens=5, seed=4), stream=False
    )
    request.chat.messages.extend([pb.ChatMessage(role="user", content="Hi there")])
    msgs = [m async for m in stub.Generate(request)]
    prompt = render_chat([ChatTurn("user", "Hi there")])
    assert "".join(msgs[0].tokens) == expected_text("fast", prompt, 4, 5)


@pytest.mark.parametrize(
    ("model", "max_tokens", "code", "error_type", "param", "retry_after_ms"),
    [
        ("no-such-model", 4, grpc.StatusCode.NOT_FOUND, "model_not_found", "model", None),
        ("tight", 17, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", "max_tokens", None),
        ("busy", 4, grpc.StatusCode.RESOURCE_EXHAUSTED, "engine_overloaded", None, "1000"),
        ("broken", 4, grpc.StatusCode.INTERNAL, "internal_error", None, None),
        ("", 4, grpc.StatusCode.INVALID_ARGUMENT, "invalid_request_error", "model", None),
    ],
)
async def test_domain_errors_arrive_as_status_with_trailing_metadata(
    stub: inference_pb2_grpc.InferenceStub,
    model: str,
    max_tokens: int,
    code: grpc.StatusCode,
    error_type: str,
    param: str | None,
    retry_after_ms: str | None,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(generate_request(model, max_tokens=max_tokens)):
            pass
    exc = info.value
    assert exc.code() == code
    assert exc.details()
    md = trailing(exc)
    assert md["aftershock-error-type"] == error_type
    assert md.get("aftershock-error-param") == param
    assert md.get("aftershock-retry-after-ms") == retry_after_ms


async def test_requests_are_counted_by_code(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    async for _ in stub.Generate(generate_request("fast", max_tokens=3)):
        pass
    for request in (generate_request("nope"), generate_request("tight", max_tokens=99)):
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in stub.Generate(request):
                pass

    def count(model: str, code: str) -> float:
        return replica.sample("aftershock_requests_total", service="inference", model=model, code=code)

    await wait_until(lambda: count("tight", "INVALID_ARGUMENT") == 1, what="requests counted")
    assert count("fast", "OK") == 1
    assert count("unknown", "NOT_FOUND") == 1  # unknown model names never become label values
    assert replica.sample("aftershock_in_flight_requests", service="inference") == 0
    assert (
        replica.sample(
            "aftershock_request_duration_seconds_count", service="inference", model="fast", stream="true"
        )
        == 1
    )


async def test_client_deadline_reaches_the_engine(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stub.Generate(generate_request("slow", max_tokens=200), timeout=0.3):
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    await wait_until(lambda: replica.engine.stats.aborted == 1, what="engine abort")
    generated = replica.engine.stats.generated_tokens
    assert generated < 20
    assert replica.sample("vllm:num_requests_running", model_name="slow") == 0


async def test_cancelled_call_aborts_in_the_engine(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    call = stub.Generate(generate_request("slow", max_tokens=200))
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 2:
            break
    call.cancel()
    await wait_until(lambda: replica.engine.stats.aborted == 1, what="engine abort")
    await wait_until(
        lambda: (
            replica.sample("aftershock_requests_total", service="inference", model="slow", code="CANCELLED")
            == 1
        ),
        what="cancellation counted",
    )
    assert replica.engine.stats.generated_tokens < 50


async def test_list_models(stub: inference_pb2_grpc.InferenceStub) -> None:
    resp = await stub.ListModels(pb.ListModelsRequest())
    by_name = {m.name: m for m in resp.models}
    assert set(by_name) == {m.name for m in MODELS}
    tight = by_name["tight"]
    assert (tight.max_model_len, tight.max_output_tokens, tight.engine) == (64, 16, "sim")
    assert (tight.ready_replicas, tight.total_replicas) == (1, 1)


async def test_get_load_reports_the_engines_load(stub: inference_pb2_grpc.InferenceStub) -> None:
    """What the backend's load-aware placement polls: running, waiting and KV cache usage."""
    long_prompt = " ".join(f"w{i}" for i in range(40))  # two full blocks of 16 and a partial one
    call = stub.Generate(generate_request("slow", long_prompt, max_tokens=40, seed=1))
    first = await call.read()
    assert first.tokens
    load = await stub.GetLoad(inference_pb2.GetLoadRequest())
    assert (load.running, load.waiting) == (1, 0)
    assert load.kv_cache_usage > 0
    call.cancel()
