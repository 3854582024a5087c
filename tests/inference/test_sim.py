"""The simulator engine under a FakeClock: exact timings, no real sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from aftershock import errors
from aftershock.clock import FakeClock
from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest, render_chat
from aftershock.inference.sim import SimEngine
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_tokens import TokenStream, count_prompt_tokens, expected_text
from aftershock.metrics import EngineMetrics, new_registry
from prometheus_client import CollectorRegistry

PROMPT = "Once upon a time in a quiet town"


@dataclass
class Sim:
    engine: SimEngine
    clock: FakeClock
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


MakeSim = Callable[..., Awaitable[Sim]]


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    started: list[SimEngine] = []

    async def make(*models: SimModelConfig, fault_seed: int = 0) -> Sim:
        clock = FakeClock()
        registry = new_registry()
        engine = SimEngine(models, EngineMetrics(registry), clock=clock, fault_seed=fault_seed)
        await engine.start()
        started.append(engine)
        return Sim(engine, clock, registry)

    yield make
    for engine in started:
        await engine.stop()


def req(model: str = "m", prompt: str | None = PROMPT, max_tokens: int = 10, **kw: object) -> EngineRequest:
    return EngineRequest(request_id="r", model=model, max_tokens=max_tokens, prompt=prompt, **kw)  # type: ignore[arg-type]


async def run(it: AsyncIterator[EngineOutput]) -> tuple[str, list[EngineOutput]]:
    outs = [out async for out in it]
    return "".join(t for o in outs for t in o.tokens), outs


async def test_tokens_are_the_deterministic_stream(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    text, outs = await run(sim.engine.generate(req(max_tokens=20, seed=7)))
    assert text == expected_text("m", PROMPT, 7, 20)
    last = outs[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 20
    assert last.prompt_tokens == count_prompt_tokens(PROMPT)
    assert all(o.finish_reason is None for o in outs[:-1])
    # Same request again: same text.
    again, _ = await run(sim.engine.generate(req(max_tokens=20, seed=7)))
    assert again == text


async def test_chat_messages_use_the_chat_template(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    turns = (ChatTurn("system", "Be brief."), ChatTurn("user", "Hello there"))
    text, outs = await run(sim.engine.generate(req(prompt=None, messages=turns, max_tokens=6, seed=3)))
    prompt = render_chat(turns)
    assert text == expected_text("m", prompt, 3, 6)
    assert outs[-1].prompt_tokens == count_prompt_tokens(prompt)


async def test_different_seeds_give_different_text(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    a, _ = await run(sim.engine.generate(req(max_tokens=12, seed=1)))
    b, _ = await run(sim.engine.generate(req(max_tokens=12, seed=2)))
    assert a != b


async def test_greedy_is_deterministic_and_unseeded_sampling_is_not(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    g1, _ = await run(sim.engine.generate(req(max_tokens=12, temperature=0.0)))
    g2, _ = await run(sim.engine.generate(req(max_tokens=12, temperature=0.0)))
    assert g1 == g2
    assert req(temperature=0.0).deterministic and not req(temperature=0.7).deterministic
    s1, _ = await run(sim.engine.generate(req(max_tokens=12, temperature=0.7)))
    s2, _ = await run(sim.engine.generate(req(max_tokens=12, temperature=0.7)))
    assert s1 != s2


async def test_continuous_batching_honours_max_num_seqs(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", max_num_seqs=2, itl_s=0.1))
    running_seen: list[float] = []

    async def consume(it: AsyncIterator[EngineOutput]) -> EngineOutput:
        last: EngineOutput | None = None
        async for out in it:
            running_seen.append(sim.sample("vllm:num_requests_running", model_name="m"))
            last = out
        assert last is not None
        return last

    its = [sim.engine.generate(req(max_tokens=5, seed=i)) for i in range(4)]
    # Submitted but not yet scheduled: all four wait.
    assert sim.sample("vllm:num_requests_waiting", model_name="m") == 4
    finals = await asyncio.gather(*(consume(it) for it in its))
    assert max(running_seen) == 2
    # The first two run at once; the other two wait for them: 5 tokens at 0.1 s apart = 0.4 s.
    assert [f.queue_s for f in finals] == pytest.approx([0.0, 0.0, 0.4, 0.4])
    assert [f.ttft_s for f in finals] == pytest.approx([0.0, 0.0, 0.4, 0.4])
    assert [f.e2e_s for f in finals] == pytest.approx([0.4, 0.4, 0.8, 0.8])
    assert sim.sample("vllm:request_queue_time_seconds_count", model_name="m") == 4
    assert sim.sample("vllm:request_queue_time_seconds_sum", model_name="m") == pytest.approx(0.8)
    assert sim.sample("vllm:num_requests_running", model_name="m") == 0
    assert sim.sample("vllm:num_requests_waiting", model_name="m") == 0


async def test_prefill_time_grows_with_prompt_length(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", ttft_s=0.05, prefill_s_per_token=0.001, itl_s=0.01))
    short = "one two three four five six seven eight nine ten"
    long = " ".join(["word"] * 100)
    _, a = await run(sim.engine.generate(req(prompt=short, max_tokens=1, seed=1)))
    _, b = await run(sim.engine.generate(req(prompt=long, max_tokens=1, seed=1)))
    assert a[-1].ttft_s == pytest.approx(0.05 + 0.001 * 10)
    assert b[-1].ttft_s == pytest.approx(0.05 + 0.001 * 100)
    assert a[-1].queue_s == 0.0


async def test_inter_token_latency(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", ttft_s=0.2, itl_s=0.03))
    start = sim.clock.now()
    _, outs = await run(sim.engine.generate(req(prompt="hi", max_tokens=11, seed=1)))
    final = outs[-1]
    assert final.ttft_s == pytest.approx(0.2)
    assert final.e2e_s == pytest.approx(0.2 + 10 * 0.03)
    assert sim.clock.now() - start == pytest.approx(final.e2e_s)
    assert sim.sample("vllm:inter_token_latency_seconds_count", model_name="m") == 10
    assert sim.sample("vllm:inter_token_latency_seconds_sum", model_name="m") == pytest.approx(0.3)


async def test_stop_string_at_a_token_boundary(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    stream = TokenStream("m", PROMPT, 3)
    tokens = [stream.next() for _ in range(30)]
    full = "".join(tokens)
    stop = tokens[6]
    cut = full[: full.index(stop)]
    # The token that completes the stop string is generated (and counted) but not emitted.
    needed = next(k for k in range(1, 31) if stop in "".join(tokens[:k]))
    text, outs = await run(sim.engine.generate(req(max_tokens=30, seed=3, stop=(stop,))))
    assert text == cut
    assert outs[-1].finish_reason == "stop"
    assert outs[-1].completion_tokens == needed


async def test_stop_string_spanning_tokens_is_not_emitted(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    stream = TokenStream("m", PROMPT, 5)
    tokens = [stream.next() for _ in range(10)]
    full = "".join(tokens)
    boundary = len(tokens[0]) + len(tokens[1])
    stop = full[boundary - 2 : boundary + 2]  # last 2 chars of token 2 + first 2 of token 3
    text, outs = await run(sim.engine.generate(req(max_tokens=10, seed=5, stop=(stop,))))
    assert outs[-1].finish_reason == "stop"
    assert text == full[: full.index(stop)]


async def test_default_max_tokens_when_zero(make_sim: MakeSim) -> None:
    sim = await make_sim(
        SimModelConfig(name="m", default_max_tokens=7),
        SimModelConfig(name="tiny", max_model_len=12, default_max_tokens=256),
    )
    text, outs = await run(sim.engine.generate(req(max_tokens=0, seed=1)))
    assert outs[-1].completion_tokens == 7 and outs[-1].finish_reason == "length"
    assert text == expected_text("m", PROMPT, 1, 7)
    # Capped by what is left of the context: 12 - 8 prompt tokens.
    _, outs = await run(sim.engine.generate(req("tiny", max_tokens=0, seed=1)))
    assert outs[-1].completion_tokens == 12 - count_prompt_tokens(PROMPT)


async def test_deadline_aborts_and_raises_deadline_exceeded(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", itl_s=0.1))
    start = sim.clock.now()
    it = sim.engine.generate(req(max_tokens=100, seed=4, deadline=start + 0.35))
    got: list[str] = []
    with pytest.raises(errors.DeadlineExceeded) as info:
        async for out in it:
            got.extend(out.tokens)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert sim.clock.now() - start == pytest.approx(0.35)
    # Tokens at 0, 0.1, 0.2 and 0.3 s; nothing after the deadline.
    assert sim.engine.stats.generated_tokens == 4
    assert expected_text("m", PROMPT, 4, 4).startswith("".join(got))
    assert sim.engine.stats.aborted == 1
    assert sim.sample("vllm:request_success_total", model_name="m", finished_reason="abort") == 1
    assert sim.sample("vllm:num_requests_running", model_name="m") == 0


async def test_deadline_of_a_waiting_request(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", max_num_seqs=1, itl_s=1.0))
    start = sim.clock.now()
    busy = sim.engine.generate(req(max_tokens=10, seed=1))
    queued = sim.engine.generate(req(max_tokens=10, seed=2, deadline=start + 0.5))
    busy_task = asyncio.create_task(run(busy))
    with pytest.raises(errors.DeadlineExceeded):
        await run(queued)
    deadline_seen_at = sim.clock.now() - start
    await busy_task
    # The deadline (0.5 s) ends the queued request at the scheduler's next step, long before the busy
    # request (10 tokens, 1 s apart) would have let it run; the fake clock jumps to that step (1 s).
    assert deadline_seen_at <= 1.0


async def test_closing_the_iterator_early_aborts(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", itl_s=0.01))
    it = cast(AsyncGenerator[EngineOutput, None], sim.engine.generate(req(max_tokens=1000, seed=1)))
    await it.__anext__()
    await it.__anext__()
    assert sim.sample("vllm:num_requests_running", model_name="m") == 1
    await it.aclose()
    assert sim.engine.stats.aborted == 1
    assert sim.sample("vllm:request_success_total", model_name="m", finished_reason="abort") == 1
    generated = sim.engine.stats.generated_tokens
    for _ in range(20):
        await asyncio.sleep(0)
    assert sim.engine.stats.generated_tokens == generated < 1000
    assert sim.sample("vllm:num_requests_running", model_name="m") == 0


async def test_waiting_queue_bound_answers_resource_exhausted(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", max_num_seqs=1, max_waiting=1))
    first = sim.engine.generate(req(max_tokens=3, seed=1))
    with pytest.raises(errors.ResourceExhausted) as info:
        sim.engine.generate(req(max_tokens=3, seed=2))
    err = info.value
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.error_type == "engine_overloaded"
    assert err.retry_after_s == 1.0
    assert ("aftershock-retry-after-ms", "1000") in err.trailing_metadata()
    text, _ = await run(first)
    assert text == expected_text("m", PROMPT, 1, 3)


async def test_injected_overload_fault(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", fault_overloaded_rate=1.0))
    with pytest.raises(errors.ResourceExhausted) as info:
        sim.engine.generate(req())
    assert info.value.retry_after_s == 1.0
    assert info.value.error_type == "engine_overloaded"
    assert sim.sample("aftershock_engine_faults_injected_total", model="m", kind="overloaded") == 1


async def test_injected_error_fault(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", fault_error_rate=1.0))
    with pytest.raises(errors.Internal) as info:
        sim.engine.generate(req())
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert sim.sample("aftershock_engine_faults_injected_total", model="m", kind="error") == 1


async def test_injected_slow_start_adds_to_ttft(make_sim: MakeSim) -> None:
    sim = await make_sim(
        SimModelConfig(name="m", ttft_s=0.1, fault_slow_start_rate=1.0, fault_slow_start_s=2.5),
    )
    text, outs = await run(sim.engine.generate(req(prompt="hi", max_tokens=2, seed=1)))
    assert outs[-1].ttft_s == pytest.approx(0.1 + 2.5)
    assert text == expected_text("m", "hi", 1, 2)
    assert sim.sample("aftershock_engine_faults_injected_total", model="m", kind="slow_start") == 1


async def test_fault_rates_are_drawn_per_request(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", fault_error_rate=0.5), fault_seed=123)
    failed = 0
    for i in range(40):
        try:
            await run(sim.engine.generate(req(max_tokens=1, seed=i)))
        except errors.Internal:
            failed += 1
    assert 5 < failed < 35
    assert sim.sample("aftershock_engine_faults_injected_total", model="m", kind="error") == failed


async def test_unknown_model(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    with pytest.raises(errors.ModelNotFound) as info:
        sim.engine.generate(req("nope"))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.param == "model"
    assert "nope" in info.value.message


async def test_max_tokens_above_the_model_limit(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", max_output_tokens=50))
    with pytest.raises(errors.InvalidArgument) as info:
        sim.engine.generate(req(max_tokens=51))
    assert info.value.param == "max_tokens"
    assert "50" in info.value.message


async def test_context_length(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m", max_model_len=20))
    prompt = " ".join(["w"] * 15)
    with pytest.raises(errors.InvalidArgument) as info:
        sim.engine.generate(req(prompt=prompt, max_tokens=6))
    assert info.value.param == "max_tokens"
    assert "maximum context length is 20" in info.value.message and "needs 21" in info.value.message
    # Exactly the context length is fine.
    _, outs = await run(sim.engine.generate(req(prompt=prompt, max_tokens=5, seed=1)))
    assert outs[-1].completion_tokens == 5


async def test_prompt_or_messages_required(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m"))
    with pytest.raises(errors.InvalidArgument) as info:
        sim.engine.generate(req(prompt=None))
    assert info.value.param == "prompt"


async def test_vllm_metrics_carry_model_name(make_sim: MakeSim) -> None:
    sim = await make_sim(SimModelConfig(name="m-a"), SimModelConfig(name="m-b"))
    await run(sim.engine.generate(req("m-a", max_tokens=6, seed=1)))
    await run(sim.engine.generate(req("m-b", max_tokens=3, seed=1)))
    assert [(s.name, s.engine, s.max_model_len) for s in sim.engine.models()] == [
        ("m-a", "sim", 8192),
        ("m-b", "sim", 8192),
    ]
    for model, n in (("m-a", 6), ("m-b", 3)):
        assert sim.sample("vllm:generation_tokens_total", model_name=model) == n
        assert sim.sample("vllm:prompt_tokens_total", model_name=model) == count_prompt_tokens(PROMPT)
        assert sim.sample("vllm:request_success_total", model_name=model, finished_reason="length") == 1
        assert sim.sample("vllm:time_to_first_token_seconds_count", model_name=model) == 1
        assert sim.sample("vllm:e2e_request_latency_seconds_count", model_name=model) == 1
        assert sim.sample("vllm:inter_token_latency_seconds_count", model_name=model) == n - 1
    names = {
        s.name
        for family in sim.registry.collect()
        if family.name.startswith("vllm:")
        for s in family.samples
        if s.labels.get("model_name") == "m-a"
    }
    assert {
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
    } <= names
    assert sim.engine.stats.started == 2 and sim.engine.stats.finished == 2
    assert sim.engine.stats.generated_tokens == 9


async def test_needs_a_model() -> None:
    with pytest.raises(ValueError):
        SimEngine([], EngineMetrics(new_registry()))
