"""Dedupe keeps the original response identity: a real backend over gRPC, a real sim replica and a
real redis-server. Fifty concurrent requests with one key: one generation, one text, one id."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aftershock.backend.service import BackendService
from aftershock.backend.settings import BackendSettings
from aftershock.inference.sim_config import SimModelConfig
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import RunningInference, backend_stub, generate_request, start_inference, write_registry

MODEL = "slow"


@pytest.fixture
async def stack(
    tmp_path: Path, redis_url: str
) -> AsyncIterator[tuple[backend_pb2_grpc.BackendStub, RunningInference]]:
    replica = await start_inference((SimModelConfig(name=MODEL, itl_s=0.01),), name="a")
    registry = write_registry(tmp_path / "models.yaml", {"a": replica.address}, {MODEL: ["a"]})
    backend = BackendService(
        BackendSettings(
            port=0,
            metrics_port=0,
            registry_file=registry,
            redis_url=redis_url,
            dedupe_redis_timeout_s=2.0,  # a loaded test machine must not turn into a bypass
            shutdown_grace_s=0,
        )
    )
    await backend.start()
    try:
        assert await backend.pool.wait_healthy(["a"], within_s=10)
        async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
            yield stub, replica
    finally:
        await backend.stop(0)
        await replica.service.stop(0)


def keyed(key: str, n: int, *, stream: bool) -> pb.GenerateRequest:
    # Unseeded at temperature 1: two generations would almost surely differ.
    req = generate_request(MODEL, "once only", max_tokens=20, seed=None, temperature=1.0, stream=stream)
    req.idempotency_key = key
    req.request_id = f"req-{n}"
    req.completion_id = f"cmpl-{n}"  # what each caller's edge chose
    req.created = 1_700_000_000 + n
    return req


async def answer(stub: backend_pb2_grpc.BackendStub, req: pb.GenerateRequest) -> tuple[str, str, int]:
    """(text, id, created) as the edge would answer: its own id unless the first message names one."""
    msgs = [m async for m in stub.Generate(req)]
    first = msgs[0]
    cid, created = (
        (first.completion_id, first.created) if first.completion_id else (req.completion_id, req.created)
    )
    assert all(not m.completion_id for m in msgs[1:])  # only the first message carries it
    return "".join(t for m in msgs for t in m.tokens), cid, created


@pytest.mark.parametrize("stream", [True, False])
async def test_fifty_duplicates_get_one_generation_one_text_and_one_identity(
    stack: tuple[backend_pb2_grpc.BackendStub, RunningInference], stream: bool
) -> None:
    stub, replica = stack
    key = uuid.uuid4().hex
    finished = replica.engine.stats.finished
    answers = await asyncio.gather(*(answer(stub, keyed(key, n, stream=stream)) for n in range(50)))
    assert replica.engine.stats.finished - finished == 1  # one generation
    assert len({text for text, _, _ in answers}) == 1
    identities = {(cid, created) for _, cid, created in answers}
    assert len(identities) == 1
    ((cid, created),) = identities
    owner = int(cid.removeprefix("cmpl-"))  # one of the callers' own pair, kept whole
    assert created == 1_700_000_000 + owner
    # A later retry with the same key is a replay: same text, same id and created, no generation.
    text, replay_id, replay_created = await answer(stub, keyed(key, 99, stream=stream))
    assert (text, replay_id, replay_created) == (answers[0][0], cid, created)
    assert replica.engine.stats.finished - finished == 1
