"""The openai engine against each fault of the misbehaving upstream server, run as a real process:
every fault ends in a clear error of the right code (or the whole answer), never a cut answer
presented as complete and never a wait past the request's deadline."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from aftershock import errors
from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest, render_chat
from aftershock.inference.openai_engine import OpenAIEngine
from aftershock.inference.sim_tokens import expected_text

from tests.upstream_proc import UpstreamProc, start_upstream

MODEL = "up-chat"
PROMPT = "tell me about faults"


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamProc]:
    proc = start_upstream([MODEL], itl_s=0.01)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def engine(upstream: UpstreamProc) -> AsyncIterator[OpenAIEngine]:
    upstream.clear()
    eng = OpenAIEngine(f"{upstream.url}/v1", timeout_s=30, stream_idle_timeout_s=0.5)
    await eng.start()
    yield eng
    await eng.stop()
    upstream.clear()


def req(**kw: Any) -> EngineRequest:
    base: dict[str, Any] = {
        "request_id": "up-1",
        "model": MODEL,
        "max_tokens": 10,
        "prompt": PROMPT,
        "seed": 3,
    }
    return EngineRequest(**(base | kw))


async def collect(engine: OpenAIEngine, request: EngineRequest) -> tuple[str, list[EngineOutput]]:
    outs: list[EngineOutput] = []
    async for out in engine.generate(request):
        outs.append(out)
    return "".join(t for o in outs for t in o.tokens), outs


async def test_a_healthy_answer_is_the_seeded_text(engine: OpenAIEngine) -> None:
    text, outs = await collect(engine, req())
    assert text == expected_text(MODEL, PROMPT, 3, 10)
    assert outs[-1].finish_reason == "length" and outs[-1].completion_tokens == 10
    turns = (ChatTurn("user", "hi"),)
    text, _ = await collect(engine, req(prompt=None, messages=turns))
    assert text == expected_text(MODEL, render_chat(turns), 3, 10)


def test_non_streamed_answer_is_the_same_text(upstream: UpstreamProc) -> None:
    upstream.clear()
    body = {"model": MODEL, "prompt": PROMPT, "seed": 3, "max_tokens": 10}
    resp = httpx.post(f"{upstream.url}/v1/completions", json=body, timeout=10)
    assert resp.json()["choices"][0]["text"] == expected_text(MODEL, PROMPT, 3, 10)


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_error_before_the_first_token_is_unavailable(
    engine: OpenAIEngine, upstream: UpstreamProc, status: int
) -> None:
    upstream.fault("status", status=status, count=1)
    with pytest.raises(errors.Unavailable):
        await collect(engine, req())
    text, _ = await collect(engine, req())  # the fault had a count of one: the server recovered
    assert text == expected_text(MODEL, PROMPT, 3, 10)


async def test_retry_after_of_a_429_is_carried(engine: OpenAIEngine, upstream: UpstreamProc) -> None:
    upstream.fault("status", status=429, retry_after_s=7)
    with pytest.raises(errors.ResourceExhausted) as info:
        await collect(engine, req())
    assert info.value.retry_after_s == 7.0


async def test_retry_after_of_a_503_is_carried(engine: OpenAIEngine, upstream: UpstreamProc) -> None:
    upstream.fault("status", status=503, retry_after_s=4)
    with pytest.raises(errors.Unavailable) as info:
        await collect(engine, req())
    assert info.value.retry_after_s == 4.0


async def test_malformed_event_mid_stream_is_unavailable(
    engine: OpenAIEngine, upstream: UpstreamProc
) -> None:
    upstream.fault("malformed", after_tokens=3)
    got: list[EngineOutput] = []
    with pytest.raises(errors.Unavailable) as info:
        async for out in engine.generate(req()):
            got.append(out)
    assert len(got) == 3 and "malformed" in info.value.message


@pytest.mark.parametrize("abrupt", [False, True])
async def test_cut_stream_is_never_complete(
    engine: OpenAIEngine, upstream: UpstreamProc, abrupt: bool
) -> None:
    upstream.fault("cut", after_tokens=4, abrupt=abrupt)
    got: list[EngineOutput] = []
    with pytest.raises(errors.Unavailable) as info:
        async for out in engine.generate(req()):
            got.append(out)
    assert [o.finish_reason for o in got] == [None] * 4, "a cut answer must not end with a finish reason"
    assert "cut" in info.value.message or "before the answer was complete" in info.value.message


async def test_stall_mid_answer_says_so(engine: OpenAIEngine, upstream: UpstreamProc) -> None:
    upstream.fault("stall_after", after_tokens=2, stall_s=30)
    started = time.monotonic()
    got: list[EngineOutput] = []
    with pytest.raises(errors.Unavailable) as info:
        async for out in engine.generate(req()):
            got.append(out)
    assert len(got) == 2
    assert "stalled mid-answer" in info.value.message
    assert time.monotonic() - started < 5  # the idle timeout (0.5 s), not the stall (30 s)


@pytest.mark.parametrize("kind", ["stall_before", "stall_after"])
async def test_a_stall_never_outlives_the_deadline(
    engine: OpenAIEngine, upstream: UpstreamProc, kind: str
) -> None:
    upstream.fault(kind, after_tokens=1, stall_s=30)
    eng = OpenAIEngine(f"{upstream.url}/v1", timeout_s=60, stream_idle_timeout_s=60)
    await eng.start()
    started = time.monotonic()
    try:
        with pytest.raises(errors.DeadlineExceeded):
            await collect(eng, req(deadline=time.monotonic() + 0.8))
    finally:
        await eng.stop()
    assert time.monotonic() - started < 2.0


# --- a non-streamed request: one plain call, its answer one JSON body -------------------------------


async def test_non_streamed_request_is_one_call_with_the_whole_answer(engine: OpenAIEngine) -> None:
    text, outs = await collect(engine, req(stream=False))
    assert text == expected_text(MODEL, PROMPT, 3, 10)
    assert len(outs) == 1 and outs[0].finish_reason == "length"
    assert outs[0].prompt_tokens > 0 and outs[0].e2e_s == outs[0].ttft_s > 0
    turns = (ChatTurn("user", "hi"),)
    text, _ = await collect(engine, req(prompt=None, messages=turns, stream=False))
    assert text == expected_text(MODEL, render_chat(turns), 3, 10)


@pytest.mark.parametrize(("status", "error"), [(503, errors.Unavailable), (429, errors.ResourceExhausted)])
async def test_non_streamed_status_faults_keep_code_and_retry_after(
    engine: OpenAIEngine, upstream: UpstreamProc, status: int, error: type[errors.AftershockError]
) -> None:
    upstream.fault("status", status=status, retry_after_s=6, count=1)
    with pytest.raises(error) as info:
        await collect(engine, req(stream=False))
    assert info.value.retry_after_s == 6.0
    text, _ = await collect(engine, req(stream=False))
    assert text == expected_text(MODEL, PROMPT, 3, 10)


async def test_non_streamed_stall_never_outlives_the_deadline(upstream: UpstreamProc) -> None:
    upstream.clear()
    upstream.fault("stall_before", stall_s=30)
    eng = OpenAIEngine(f"{upstream.url}/v1", timeout_s=60, stream_idle_timeout_s=60)
    await eng.start()
    started = time.monotonic()
    try:
        with pytest.raises(errors.DeadlineExceeded):
            await collect(eng, req(stream=False, deadline=time.monotonic() + 0.8))
    finally:
        await eng.stop()
        upstream.clear()
    assert time.monotonic() - started < 2.0


async def test_non_streamed_unreachable_upstream_is_unavailable() -> None:
    gone = start_upstream([MODEL])
    eng = OpenAIEngine(f"{gone.url}/v1")
    await eng.start()  # learns the models, then the server goes away
    gone.stop()
    try:
        with pytest.raises(errors.Unavailable) as info:
            await collect(eng, req(stream=False))
    finally:
        await eng.stop()
    assert "unreachable" in info.value.message
