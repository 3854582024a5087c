"""Inference.Complete (the unary call for a non-streamed request) over real loopback gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aftershock.inference.sim_tokens import count_prompt_tokens, expected_text
from aftershock.v1 import generation_pb2 as pb
from aftershock.v1 import inference_pb2_grpc

from tests.inference.conftest import PROMPT
from tests.inproc import (
    RunningInference,
    generate_request,
    trailing,
    wait_until,
)


async def test_complete_answers_the_whole_completion_as_generate_would(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    msg = await stub.Complete(generate_request("fast", PROMPT, max_tokens=40, seed=9, stream=False))
    assert "".join(msg.tokens) == expected_text("fast", PROMPT, 9, 40)
    assert (msg.finish_reason, msg.completion_tokens) == (pb.FINISH_REASON_LENGTH, 40)
    assert msg.prompt_tokens == count_prompt_tokens(PROMPT)
    assert msg.reproducible
    [streamed] = [
        m async for m in stub.Generate(generate_request("fast", PROMPT, max_tokens=40, seed=9, stream=False))
    ]
    assert list(streamed.tokens) == list(msg.tokens)
    # Counted like a non-streamed Generate: one request, stream="false", nothing left in flight.
    labels = {"service": "inference", "model": "fast"}
    assert replica.sample("aftershock_requests_total", **labels, code="OK") == 2
    assert replica.sample("aftershock_request_duration_seconds_count", **labels, stream="false") == 2
    assert replica.sample("aftershock_in_flight_requests", service="inference") == 0


async def test_complete_errors_keep_their_code_and_metadata(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(generate_request("tight", max_tokens=17, stream=False))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(info.value)["aftershock-error-param"] == "max_tokens"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(generate_request("busy", stream=False))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(generate_request("", stream=False))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        replica.sample(
            "aftershock_requests_total", service="inference", model="busy", code="RESOURCE_EXHAUSTED"
        )
        == 1
    )


async def test_complete_deadline_reaches_the_engine(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Complete(generate_request("slow", max_tokens=200, stream=False), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_until(lambda: replica.engine.stats.aborted == 1, what="engine abort")
    assert replica.engine.stats.generated_tokens < 20


async def test_cancelled_complete_aborts_in_the_engine(
    replica: RunningInference, stub: inference_pb2_grpc.InferenceStub
) -> None:
    call = stub.Complete(generate_request("slow", max_tokens=200, stream=False))
    await wait_until(lambda: replica.engine.stats.generated_tokens >= 2, what="generation under way")
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: replica.engine.stats.aborted == 1, what="engine abort")
    await wait_until(
        lambda: (
            replica.sample("aftershock_requests_total", service="inference", model="slow", code="CANCELLED")
            == 1
        ),
        what="cancellation counted",
    )
    assert replica.engine.stats.generated_tokens < 50
