"""Routing over real gRPC: prefix affinity, engine load, fallback models and hedged first tokens.

Two or three in-process sim replicas behind a real backend service, registry written as a user
would write it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from aftershock.backend.service import BackendService
from aftershock.inference.sim_config import SimModelConfig
from aftershock.v1 import generation_pb2 as pb

from tests.inproc import RunningInference, backend_stub, start_backend, start_inference, wait_until

SYSTEM = "You are the support assistant of a large bank. Answer briefly and politely. " * 8


def chat(user: str, *, system: str = SYSTEM, model: str = "m", stream: bool = True) -> pb.GenerateRequest:
    req = pb.GenerateRequest(request_id=f"r-{user}", model=model, stream=stream)
    req.sampling.max_tokens = 4
    req.sampling.seed = 1
    req.chat.messages.add(role="system", content=system)
    req.chat.messages.add(role="user", content=user)
    return req


async def replicas_of(
    backend: BackendService, requests: Sequence[pb.GenerateRequest]
) -> list[pb.GenerateResponse]:
    """The last message of each request, sent one after another."""
    lasts: list[pb.GenerateResponse] = []
    async with backend_stub(f"127.0.0.1:{backend.port}") as stub:
        for req in requests:
            last = None
            async for msg in stub.Generate(req, timeout=10):
                last = msg
            assert last is not None
            lasts.append(last)
    return lasts


class Live:
    def __init__(self, replicas: list[RunningInference], backend: BackendService) -> None:
        self.replicas = replicas
        self.backend = backend


async def live(
    tmp_path: Path, replicas: list[RunningInference], models: list[dict[str, Any]], **settings: Any
) -> Live:
    doc = {"replicas": [{"name": r.name, "address": r.address} for r in replicas], "models": models}
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(doc))
    backend = await start_backend(path, wait_for=[r.name for r in replicas], **settings)
    return Live(replicas, backend)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[Live]:
    models = [SimModelConfig(name="m")]
    reps = [await start_inference(models, name=f"r{i}") for i in range(2)]
    stack = await live(tmp_path, reps, [{"name": "m", "replicas": ["r0", "r1"]}])
    yield stack
    await stack.backend.stop()
    for r in reps:
        await r.service.stop()


async def test_requests_sharing_a_prefix_go_to_one_replica(two: Live) -> None:
    lasts = await replicas_of(two.backend, [chat(f"question {i}") for i in range(12)])
    assert len({m.replica for m in lasts}) == 1
    reasons = two.backend.metrics.routing_decisions_total
    assert reasons.labels("m", "prefix")._value.get() == 12


async def test_different_prefixes_spread_over_replicas(two: Live) -> None:
    systems = [f"Persona number {i}: " + "be concise and exact. " * 12 for i in range(16)]
    lasts = await replicas_of(two.backend, [chat("hi", system=s) for s in systems])
    counts = Counter(m.replica for m in lasts)
    assert set(counts) == {"r0", "r1"}, counts


async def test_short_prompts_are_placed_by_load(two: Live) -> None:
    req = pb.GenerateRequest(request_id="s", model="m", prompt="hi", stream=False)
    req.sampling.max_tokens = 2
    await replicas_of(two.backend, [req] * 4)
    assert two.backend.metrics.routing_decisions_total.labels("m", "least_loaded")._value.get() == 4


async def test_engine_load_is_polled_from_every_replica(tmp_path: Path) -> None:
    slow = [SimModelConfig(name="m", ttft_s=5.0, max_num_seqs=1)]
    reps = [await start_inference(slow, name="r0")]
    stack = await live(tmp_path, reps, [{"name": "m", "replicas": ["r0"]}])
    try:
        async with backend_stub(f"127.0.0.1:{stack.backend.port}") as stub:
            calls = [stub.Generate(chat(f"q{i}"), timeout=10) for i in range(3)]
            replica = stack.backend.pool.replicas["r0"]
            await wait_until(lambda: replica.load.running == 1 and replica.load.waiting == 2, within_s=5)
            for call in calls:
                call.cancel()
        await wait_until(lambda: replica.load.running + replica.load.waiting == 0, within_s=5)
    finally:
        await stack.backend.stop()
        await reps[0].service.stop()


async def test_a_prompt_beyond_the_context_moves_to_the_fallback_model(tmp_path: Path) -> None:
    reps = [
        await start_inference([SimModelConfig(name="small", max_model_len=64)], name="r0"),
        await start_inference([SimModelConfig(name="large", max_model_len=8192)], name="r1"),
    ]
    routes = [
        {"name": "small", "replicas": ["r0"], "fallback_models": ["large"]},
        {"name": "large", "replicas": ["r1"]},
    ]
    stack = await live(tmp_path, reps, routes)
    try:
        short, long = chat("hi", system="Be brief.", model="small"), chat("hi", model="small")
        lasts = await replicas_of(stack.backend, [short, long])
        assert [(m.replica, m.model) for m in lasts] == [("r0", ""), ("r1", "large")]
        assert (
            stack.backend.metrics.routing_decisions_total.labels("small", "fallback_model")._value.get() == 1
        )
    finally:
        await stack.backend.stop()
        for r in reps:
            await r.service.stop()


async def test_a_late_first_token_is_hedged_and_the_loser_aborted(tmp_path: Path) -> None:
    # r0 answers its first token after 3 s, r1 at once: a hedge after 0.2 s wins on r1.
    reps = [
        await start_inference([SimModelConfig(name="m", ttft_s=3.0)], name="r0"),
        await start_inference([SimModelConfig(name="m")], name="r1"),
    ]
    hedge = {"enabled": True, "after_s": 0.2}
    stack = await live(tmp_path, reps, [{"name": "m", "replicas": ["r0", "r1"], "hedge": hedge}])
    try:
        lasts = await replicas_of(stack.backend, [chat(f"q{i}", system=f"{i} " * 300) for i in range(6)])
        hedges = stack.backend.metrics.hedges_total
        started = hedges.labels("m", "started")._value.get()
        won = hedges.labels("m", "won")._value.get()
        assert all(m.replica == "r1" for m in lasts)
        # Requests whose home is r0 were hedged to r1 and r0's generation aborted.
        assert started == won == reps[0].engine.stats.aborted >= 1
        assert reps[1].engine.stats.aborted == 0
        # The replica that lost is passed over for a while, so it is not hedged on every request.
        assert stack.backend.pool.replicas["r0"].slow_until > stack.backend.pool.clock.now()
    finally:
        await stack.backend.stop()
        for r in reps:
            await r.service.stop()


async def test_without_hedging_a_late_replica_keeps_its_requests(tmp_path: Path) -> None:
    """The negative control of the hedge test: the same late replica, hedging off."""
    reps = [
        await start_inference([SimModelConfig(name="m", ttft_s=0.5)], name="r0"),
        await start_inference([SimModelConfig(name="m")], name="r1"),
    ]
    stack = await live(tmp_path, reps, [{"name": "m", "replicas": ["r0", "r1"]}])
    try:
        lasts = await replicas_of(stack.backend, [chat(f"q{i}", system=f"{i} " * 300) for i in range(6)])
        assert "r0" in {m.replica for m in lasts}
        assert stack.backend.metrics.hedges_total.labels("m", "started")._value.get() == 0
    finally:
        await stack.backend.stop()
        for r in reps:
            await r.service.stop()
