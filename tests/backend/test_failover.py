"""Mid-stream failover over real gRPC between two real sim replicas: a broken seeded stream is
resumed on the other replica only when the replicas declare their output reproducible."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from aftershock.backend.service import BackendService
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_tokens import expected_text

from tests.inproc import (
    RunningInference,
    backend_stub,
    generate_request,
    start_backend,
    start_inference,
    write_registry,
)

MODEL = "slow"
PROMPT = "resume me"
TOKENS = 40


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[BackendService, dict[str, RunningInference]]]:
    models = (SimModelConfig(name=MODEL, itl_s=0.02),)
    replicas = {n: await start_inference(models, name=n) for n in ("a", "b")}
    registry = write_registry(
        tmp_path / "models.yaml", {n: r.address for n, r in replicas.items()}, {MODEL: list(replicas)}
    )
    backend = await start_backend(registry, wait_for=replicas)
    try:
        yield backend, replicas
    finally:
        await backend.stop(0)
        for r in replicas.values():
            await r.service.stop(0)


async def stream_and_kill(
    backend: BackendService, replicas: dict[str, RunningInference]
) -> tuple[str, grpc.aio.AioRpcError | None, set[str]]:
    """Stream a seeded request; after a few messages, stop the replica serving it. Returns the text,
    the error that ended the stream, and the replicas that served it (with their reproducible flag)."""
    text: list[str] = []
    served: set[str] = set()
    async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
        try:
            async for msg in stub.Generate(generate_request(MODEL, PROMPT, max_tokens=TOKENS, seed=5)):
                text.extend(msg.tokens)
                served.add(f"{msg.replica}:{msg.reproducible}")
                if len(text) == 5:
                    await replicas[msg.replica].service.stop(0)
        except grpc.aio.AioRpcError as exc:
            return "".join(text), exc, served
    return "".join(text), None, served


async def test_a_reproducible_seeded_stream_resumes_on_the_other_replica(
    pair: tuple[BackendService, dict[str, RunningInference]],
) -> None:
    backend, replicas = pair
    text, error, served = await stream_and_kill(backend, replicas)
    assert error is None
    assert served == {"a:True", "b:True"}  # the sim declares every message reproducible
    assert text == expected_text(MODEL, PROMPT, 5, TOKENS)  # seamless: nothing lost or repeated
    resumed = backend.registry.get_sample_value(
        "aftershock_failovers_total", {"model": MODEL, "phase": "mid_stream", "outcome": "resumed"}
    )
    assert resumed == 1


async def test_a_stream_the_replica_does_not_vouch_for_ends_with_the_error(
    pair: tuple[BackendService, dict[str, RunningInference]],
) -> None:
    backend, replicas = pair
    for r in replicas.values():
        r.engine.reproducible = False  # type: ignore[misc]  # an engine that makes no such promise
    text, error, served = await stream_and_kill(backend, replicas)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert len(served) == 1 and served.pop().endswith(":False")  # never resumed elsewhere
    assert expected_text(MODEL, PROMPT, 5, TOKENS).startswith(text)
    refused = backend.registry.get_sample_value(
        "aftershock_failovers_total", {"model": MODEL, "phase": "mid_stream", "outcome": "not_reproducible"}
    )
    assert refused == 1
