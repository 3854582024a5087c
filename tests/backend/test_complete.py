"""Backend.Complete (the unary call for a non-streamed request) over real gRPC, relaying from two
real sim replicas through their unary Inference.Complete: the relay's semantics hold."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from aftershock.inference.sim_tokens import expected_text
from aftershock.v1 import generation_pb2 as pb

from tests.backend import test_servicer
from tests.backend.test_servicer import PROMPT, Env, module_loop
from tests.inproc import generate_request, trailing, wait_until

# The same two replicas and backend as test_servicer's (a module-scoped fixture: one per module).
env = test_servicer.env


def unary(model: str, prompt: str = PROMPT, **kw: int) -> pb.GenerateRequest:
    return generate_request(model, prompt, stream=False, **kw)


def inference_completes(env: Env, model: str, code: str = "OK") -> float:
    return sum(
        r.sample("aftershock_requests_total", service="inference", model=model, code=code)
        for r in (env.a, env.b)
    )


@module_loop
async def test_complete_is_relayed_whole_and_counted(env: Env) -> None:
    tokens_before = env.counter("aftershock_output_tokens_total", service="backend", model="sim")
    ok_before = env.counter("aftershock_requests_total", service="backend", model="sim", code="OK")
    msg = await env.stub.Complete(unary("sim", max_tokens=30, seed=4))
    assert "".join(msg.tokens) == expected_text("sim", PROMPT, 4, 30)
    assert (msg.finish_reason, msg.completion_tokens, msg.attempts) == (pb.FINISH_REASON_LENGTH, 30, 1)
    assert msg.replica in {"a", "b"}
    assert env.counter("aftershock_output_tokens_total", service="backend", model="sim") - tokens_before == 30
    assert (
        env.counter("aftershock_requests_total", service="backend", model="sim", code="OK") - ok_before == 1
    )
    assert env.counter("aftershock_in_flight_requests", service="backend") == 0


@module_loop
async def test_complete_fails_over_before_the_answer(env: Env) -> None:
    overloaded_before = env.counter(
        "aftershock_upstream_requests_total", replica="a", code="RESOURCE_EXHAUSTED"
    )
    for seed in range(4):  # ties between the replicas take turns: some of these try "a" first
        msg = await env.stub.Complete(unary("flaky", max_tokens=5, seed=seed))
        assert "".join(msg.tokens) == expected_text("flaky", PROMPT, seed, 5)
        assert msg.replica == "b"
    retried = env.counter("aftershock_upstream_requests_total", replica="a", code="RESOURCE_EXHAUSTED")
    assert retried - overloaded_before >= 1


@module_loop
async def test_complete_deadline_is_propagated_and_the_engine_aborts(env: Env) -> None:
    aborted = env.aborted
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Complete(unary("slow", max_tokens=300), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    await wait_until(lambda: env.aborted == aborted + 1, what="the engine aborted")


@module_loop
async def test_cancelling_complete_cancels_downstream(env: Env) -> None:
    aborted = env.aborted
    generated = env.a.engine.stats.generated_tokens + env.b.engine.stats.generated_tokens
    cancelled = inference_completes(env, "slow", "CANCELLED")
    call = env.stub.Complete(unary("slow", max_tokens=300))
    await wait_until(
        lambda: env.a.engine.stats.generated_tokens + env.b.engine.stats.generated_tokens >= generated + 2,
        what="generation under way",
    )
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_until(lambda: env.aborted == aborted + 1, what="the engine aborted")
    await wait_until(lambda: inference_completes(env, "slow", "CANCELLED") == cancelled + 1, what="counted")
    now = env.a.engine.stats.generated_tokens + env.b.engine.stats.generated_tokens
    assert now - generated < 20


@module_loop
async def test_complete_errors_pass_through_with_their_metadata(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Complete(unary("sim", max_tokens=65))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert trailing(info.value)["aftershock-error-param"] == "max_tokens"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Complete(unary("no-such-model"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await env.stub.Complete(unary("orphan"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert trailing(info.value)["aftershock-retry-after-ms"] == "1000"
