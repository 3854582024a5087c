"""The Backend service over real gRPC, relaying from two real sim inference replicas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from aftershock.backend.service import BackendService
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_tokens import expected_text
from aftershock.ports import free_port
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import (
    RunningInference,
    backend_stub,
    generate_request,
    start_backend,
    start_inference,
    trailing,
    wait_until,
    write_registry,
)

module_loop = pytest.mark.asyncio(loop_scope="module")
PROMPT = "tell me a story"

# --- the service ------------------------------------------------------------------------------------

MODELS_A = (
    SimModelConfig(name="sim", max_model_len=2048, max_output_tokens=64),
    SimModelConfig(name="slow", itl_s=0.05),
    SimModelConfig(name="flaky", fault_overloaded_rate=1.0),  # always RESOURCE_EXHAUSTED on replica a
)
MODELS_B = (
    SimModelConfig(name="sim", max_model_len=2048, max_output_tokens=64),
    SimModelConfig(name="slow", itl_s=0.05),
    SimModelConfig(name="flaky"),
)


@dataclass
class Env:
    a: RunningInference
    b: RunningInference
    backend: BackendService
    stub: backend_pb2_grpc.BackendStub
    registry_file: Path

    def counter(self, name: str, **labels: str) -> float:
        value = self.backend.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    @property
    def aborted(self) -> int:
        return self.a.engine.stats.aborted + self.b.engine.stats.aborted


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    a = await start_inference(MODELS_A, "a")
    b = await start_inference(MODELS_B, "b")
    registry = write_registry(
        tmp_path_factory.mktemp("backend") / "registry.yaml",
        {"a": a.address, "b": b.address, "dead": f"127.0.0.1:{free_port()}"},
        {
            "sim": ["a", "b"],
            "slow": ["a", "b"],
            "flaky": ["a", "b"],
            "orphan": ["dead"],
            "half": ["a", "dead"],
        },
    )
    backend = await start_backend(registry, wait_for=["a", "b"])
    async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
        yield Env(a, b, backend, stub, registry)
    await backend.stop()
    await a.service.stop()
    await b.service.stop()


async def collect(call: AsyncIterator[pb.GenerateResponse]) -> list[pb.GenerateResponse]:
    return [m async for m in call]


@module_loop
async def test_stream_is_relayed_with_the_replica_named(env: Env) -> None:
    before = env.counter("aftershock_output_tokens_total", service="backend", model="sim")
    msgs = await collect(env.stub.Generate(generate_request("sim", PROMPT, max_tokens=30, seed=4)))
    assert "".join(t for m in msgs for t in m.tokens) == expected_text("sim", PROMPT, 4, 30)
    assert msgs[-1].finish_reason == pb.FINISH_REASON_LENGTH and msgs[-1].completion_tokens == 30
    assert len({m.replica for m in msgs}) == 1 and msgs[0].replica in {"a", "b"}
    assert env.counter("aftershock_output_tokens_total", service="backend", model="sim") - before == 30


@module_loop
async def test_non_stream_is_one_message(env: Env) -> None:
    msgs = await collect(
        env.stub.Generate(generate_request("sim", PROMPT, max_tokens=30, seed=4, stream=False))
    )
    assert len(msgs) == 1
    assert "".join(msgs[0].tokens) == expected_text("sim", PROMPT, 4, 30)


@module_loop
async def test_failover_before_the_first_token(env: Env) -> None:
    def attempted() -> float:
        return env.counter(
            "aftershock_failovers_total", model="flaky", phase="before_first_token", outcome="attempted"
        )

    before = attempted()
    overloaded_before = env.counter(
        "aftershock_upstream_requests_total", replica="a", code="RESOURCE_EXHAUSTED"
    )
    for seed in range(4):  # ties between the two replicas take turns: some of these try "a" first
        msgs = await collect(env.stub.Generate(generate_request("flaky", PROMPT, max_tokens=5, seed=seed)))
        assert "".join(t for m in msgs for t in m.tokens) == expected_text("flaky", PROMPT, seed, 5)
        assert {m.replica for m in msgs} == {"b"}
    overloaded = env.counter("aftershock_upstream_requests_total", replica="a", code="RESOURCE_EXHAUSTED")
    assert overloaded - overloaded_before >= 1
    assert attempted() - before == overloaded - overloaded_before
    assert env.counter("aftershock_retries_total", model="flaky", code="RESOURCE_EXHAUSTED") >= 1
    assert env.a.sample("aftershock_engine_faults_injected_total", model="flaky", kind="overloaded") >= 1


@module_loop
async def test_deadline_is_propagated_and_the_engine_aborts(env: Env) -> None:
    aborted = env.aborted
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(env.stub.Generate(generate_request("slow", max_tokens=300), timeout=0.3))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    await wait_until(lambda: env.aborted == aborted + 1, what="the engine aborted")
    await wait_until(
        lambda: (
            env.a.sample("vllm:num_requests_running", model_name="slow")
            + env.b.sample("vllm:num_requests_running", model_name="slow")
            == 0
        ),
        what="nothing left running",
    )


@module_loop
async def test_cancelling_the_call_cancels_downstream(env: Env) -> None:
    aborted = env.aborted
    generated = env.a.engine.stats.generated_tokens + env.b.engine.stats.generated_tokens
    call = env.stub.Generate(generate_request("slow", max_tokens=300))
    seen = 0
    async for _ in call:
        seen += 1
        if seen == 2:
            break
    call.cancel()
    await wait_until(lambda: env.aborted == aborted + 1, what="the engine aborted")
    now = env.a.engine.stats.generated_tokens + env.b.engine.stats.generated_tokens
    assert now - generated < 20


@module_loop
async def test_non_retryable_errors_pass_through_with_their_metadata(env: Env) -> None:
    retries = env.counter("aftershock_retries_total", model="sim", code="INVALID_ARGUMENT")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(env.stub.Generate(generate_request("sim", max_tokens=65)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "64" in (info.value.details() or "")
    md = trailing(info.value)
    assert md["aftershock-error-param"] == "max_tokens"
    assert md["aftershock-error-type"] == "invalid_request_error"
    assert env.counter("aftershock_retries_total", model="sim", code="INVALID_ARGUMENT") == retries
    await wait_until(
        lambda: (
            env.counter("aftershock_requests_total", service="backend", model="sim", code="INVALID_ARGUMENT")
            >= 1
        ),
        what="counted by code",
    )


@module_loop
async def test_unknown_model_is_not_found(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(env.stub.Generate(generate_request("no-such-model")))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    md = trailing(info.value)
    assert md["aftershock-error-type"] == "model_not_found"
    assert md["aftershock-error-param"] == "model"


@module_loop
async def test_no_healthy_replica_is_unavailable_with_retry_after(env: Env) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await collect(env.stub.Generate(generate_request("orphan")))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    md = trailing(info.value)
    assert md["aftershock-error-type"] == "no_healthy_replica"
    assert md["aftershock-retry-after-ms"] == "1000"


@module_loop
async def test_list_models_counts_ready_and_total_replicas(env: Env) -> None:
    resp = await env.stub.ListModels(pb.ListModelsRequest())
    by_name = {m.name: m for m in resp.models}
    assert set(by_name) == {"sim", "slow", "flaky", "orphan", "half"}
    assert (by_name["sim"].ready_replicas, by_name["sim"].total_replicas) == (2, 2)
    assert (by_name["half"].ready_replicas, by_name["half"].total_replicas) == (1, 2)
    assert (by_name["orphan"].ready_replicas, by_name["orphan"].total_replicas) == (0, 1)
    # Limits are learned from a ready replica; none can be learned for a model without one.
    sim = by_name["sim"]
    assert (sim.max_model_len, sim.max_output_tokens, sim.engine) == (2048, 64, "sim")
    assert sim.reproducible  # the sim declares it; the backend passes it on
    assert (by_name["orphan"].max_model_len, by_name["orphan"].engine) == (0, "")
    assert not by_name["orphan"].reproducible
    assert env.counter("aftershock_replica_healthy", model="half", replica="dead") == 0
    assert env.counter("aftershock_replica_healthy", model="half", replica="a") == 1


@module_loop
async def test_registry_edits_are_picked_up_while_serving(env: Env, tmp_path: Path) -> None:
    path = write_registry(tmp_path / "registry.yaml", {"a": env.a.address}, {"sim": ["a"]})
    backend = await start_backend(path, wait_for=["a"], reload_s=0.05)
    try:
        async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
            write_registry(path, {"a": env.a.address, "b": env.b.address}, {"sim": ["a"], "slow": ["b"]})

            async def names() -> set[str]:
                return {m.name for m in (await stub.ListModels(pb.ListModelsRequest())).models}

            deadline = time.monotonic() + 5
            while "slow" not in await names():
                assert time.monotonic() < deadline, "the registry edit was not picked up"
                await asyncio.sleep(0.02)
            assert await backend.pool.wait_healthy(["b"], 5)
            msgs = await collect(stub.Generate(generate_request("slow", max_tokens=2, seed=1)))
            assert {m.replica for m in msgs} == {"b"}
    finally:
        await backend.stop()
