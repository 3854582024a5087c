"""The simulator's prefix cache seen from outside: TTFT, vLLM's metrics and the engine's load."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aftershock.clock import FakeClock
from aftershock.inference.engine import EngineOutput, EngineRequest
from aftershock.inference.sim import SimEngine
from aftershock.inference.sim_config import SimModelConfig
from aftershock.metrics import EngineMetrics, new_registry
from prometheus_client import CollectorRegistry

SYSTEM = " ".join(f"rule{i}" for i in range(512))  # a long shared system prompt: 32 blocks of 16


def model(**kw: object) -> SimModelConfig:
    return SimModelConfig(name="m", ttft_s=0.02, prefill_s_per_token=0.001, itl_s=0.01, **kw)  # type: ignore[arg-type]


async def ttft(engine: SimEngine, prompt: str) -> float:
    req = EngineRequest(request_id="r", model="m", max_tokens=2, prompt=prompt, seed=1)
    outs: list[EngineOutput] = [o async for o in engine.generate(req)]
    return outs[-1].ttft_s


def sample(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name, {"model_name": "m"}) or 0.0


async def started(cfg: SimModelConfig) -> AsyncIterator[tuple[SimEngine, CollectorRegistry]]:
    registry = new_registry()
    engine = SimEngine([cfg], EngineMetrics(registry), clock=FakeClock())
    await engine.start()
    try:
        yield engine, registry
    finally:
        await engine.stop()


async def test_a_shared_prefix_shortens_the_second_ttft_and_counts_the_hit() -> None:
    async for engine, registry in started(model()):
        first = await ttft(engine, SYSTEM + " user one asks")
        second = await ttft(engine, SYSTEM + " user two asks something else")
        # 515 tokens all computed, then 517 tokens with the 512-token system prompt cached.
        assert first == pytest.approx(0.02 + 0.001 * 515)
        assert second == pytest.approx(0.02 + 0.001 * 5)
        assert sample(registry, "vllm:prefix_cache_queries_total") == 515 + 517
        assert sample(registry, "vllm:prefix_cache_hits_total") == 512
        assert sample(registry, "vllm:prompt_tokens_total") == 515 + 517  # vLLM counts all prompt tokens
        cache, load = engine.prefix_cache("m"), engine.load()
        assert cache.cached_blocks == 32 and cache.block_size == 16
        assert load.running == 0 and load.waiting == 0 and load.kv_cache_usage == 0.0


async def test_with_prefix_caching_off_nothing_is_shared() -> None:
    async for engine, registry in started(model(enable_prefix_caching=False)):
        first = await ttft(engine, SYSTEM + " user one asks")
        second = await ttft(engine, SYSTEM + " user one asks")
        assert first == second == pytest.approx(0.02 + 0.001 * 515)
        assert sample(registry, "vllm:prefix_cache_hits_total") == 0
        assert engine.prefix_cache("m").cached_blocks == 0


async def test_a_small_cache_evicts_the_prefix() -> None:
    # 40 blocks: the system prompt (32) fits, but a 512-token stranger pushes most of it out.
    async for engine, registry in started(model(kv_cache_blocks=40)):
        await ttft(engine, SYSTEM + " a")
        await ttft(engine, " ".join(f"other{i}" for i in range(512)) + " b")
        again = await ttft(engine, SYSTEM + " c")
        assert again > 0.02 + 0.001 * 300
        assert sample(registry, "vllm:prefix_cache_hits_total") < 512


async def test_kv_usage_reflects_blocks_held_while_running() -> None:
    async for engine, registry in started(model(kv_cache_blocks=100)):
        reqs = [
            EngineRequest(request_id=str(i), model="m", max_tokens=200, prompt=SYSTEM + f" u{i}", seed=1)
            for i in range(2)
        ]
        streams = [engine.generate(r) for r in reqs]
        firsts = [await anext(s) for s in streams]
        assert all(f.tokens for f in firsts)
        load = engine.load()
        assert load.running == 2
        # 32 shared blocks held once, plus each request's own partial block: far below 2 x 33.
        assert load.kv_cache_usage == pytest.approx(sample(registry, "vllm:kv_cache_usage_perc"))
        assert 0.34 <= load.kv_cache_usage <= 0.40
        for s in streams:
            await s.aclose()  # type: ignore[attr-defined]
        assert engine.load().kv_cache_usage == 0.0
