"""OpenAIEngine against a real OpenAI-compatible HTTP server: our own edge, in-process, over the sim.

Stack: InferenceService (sim) → BackendService → edge app under uvicorn; the engine under test
streams from http://127.0.0.1:PORT/v1 exactly as it would from `vllm serve`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import orjson
import pytest
from aftershock import errors
from aftershock.inference.engine import ChatTurn, EngineOutput, EngineRequest, render_chat
from aftershock.inference.openai_engine import OpenAIEngine, error_for_status
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_tokens import count_prompt_tokens, expected_text

from tests.inproc import EdgeServer, InProcessStack, in_process_stack, wait_until

MODELS = (
    SimModelConfig(name="sim-chat", max_model_len=4096),
    SimModelConfig(name="sim-slow", itl_s=0.02),
    SimModelConfig(name="sim-busy", fault_overloaded_rate=1.0),
)
PROMPT = "Write a haiku about loopback"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[InProcessStack]:
    # "ghost-model" is in the backend's registry but no replica serves it: upstream answers 404.
    async with in_process_stack(tmp_path, MODELS, extra_routes={"ghost-model": ["inference-0"]}) as s:
        yield s


@pytest.fixture
async def engine(stack: InProcessStack) -> AsyncIterator[OpenAIEngine]:
    eng = OpenAIEngine(f"{stack.edge.url}/v1", api_key="unused", timeout_s=30)
    await eng.start()
    yield eng
    await eng.stop()


def req(model: str = "sim-chat", **kw: Any) -> EngineRequest:
    base: dict[str, Any] = {
        "request_id": "oa-1",
        "model": model,
        "max_tokens": 12,
        "prompt": PROMPT,
        "seed": 5,
    }
    base.update(kw)
    return EngineRequest(**base)


async def run(it: AsyncIterator[EngineOutput]) -> tuple[str, list[EngineOutput]]:
    outs = [o async for o in it]
    return "".join(t for o in outs for t in o.tokens), outs


async def test_models_are_learned_from_v1_models(engine: OpenAIEngine) -> None:
    specs = {m.name: m for m in engine.models()}
    assert set(specs) == {"sim-chat", "sim-slow", "sim-busy", "ghost-model"}
    assert (specs["sim-chat"].max_model_len, specs["sim-chat"].max_output_tokens) == (4096, 4096)
    assert specs["sim-slow"].max_model_len == 8192  # reported by the server
    assert specs["ghost-model"].max_model_len == 8192  # not reported: the configured default
    assert all(m.engine == "openai" for m in specs.values())


async def test_completion_stream_matches_the_sim(engine: OpenAIEngine) -> None:
    text, outs = await run(engine.generate(req(max_tokens=20)))
    assert text == expected_text("sim-chat", PROMPT, 5, 20)
    final = outs[-1]
    assert final.finish_reason == "length"
    assert final.completion_tokens == 20
    assert final.prompt_tokens == count_prompt_tokens(PROMPT)
    assert final.e2e_s >= final.ttft_s > 0
    assert all(o.finish_reason is None for o in outs[:-1])


async def test_chat_stream_matches_the_sim(engine: OpenAIEngine) -> None:
    turns = (ChatTurn("system", "Be terse."), ChatTurn("user", 'Quote something "odd" \\ ünïcode'))
    text, outs = await run(engine.generate(req(prompt=None, messages=turns, max_tokens=15, seed=8)))
    assert text == expected_text("sim-chat", render_chat(turns), 8, 15)
    assert outs[-1].completion_tokens == 15


async def test_stop_is_passed_through(engine: OpenAIEngine) -> None:
    full = expected_text("sim-chat", PROMPT, 5, 20)
    stop = " " + full.split(" ")[4]
    text, outs = await run(engine.generate(req(max_tokens=20, stop=(stop,))))
    assert text == full[: full.index(stop)]
    assert outs[-1].finish_reason == "stop"


async def test_unknown_model_is_model_not_found(engine: OpenAIEngine) -> None:
    with pytest.raises(errors.ModelNotFound) as info:
        engine.generate(req("never-heard-of-it"))
    assert info.value.code == grpc.StatusCode.NOT_FOUND


async def test_upstream_404_keeps_the_not_found_code(engine: OpenAIEngine) -> None:
    with pytest.raises(errors.AftershockError) as info:
        await run(engine.generate(req("ghost-model")))
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert info.value.error_type == "model_not_found"
    assert "ghost-model" in info.value.message


async def test_upstream_400_is_invalid_argument(engine: OpenAIEngine) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        await run(engine.generate(req(temperature=5.0)))
    assert "temperature" in info.value.message  # the upstream's own message is kept


async def test_upstream_429_is_resource_exhausted(engine: OpenAIEngine) -> None:
    with pytest.raises(errors.ResourceExhausted) as info:
        await run(engine.generate(req("sim-busy")))
    assert info.value.retry_after_s == 1.0


async def test_max_tokens_above_the_limit_is_refused_locally(engine: OpenAIEngine) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        engine.generate(req(max_tokens=5000))
    assert info.value.param == "max_tokens"


async def test_connection_refused_is_unavailable(stack: InProcessStack) -> None:
    edge = EdgeServer(f"127.0.0.1:{stack.backend.port}")
    await edge.start()
    eng = OpenAIEngine(f"{edge.url}/v1")
    await eng.start()
    await edge.stop()  # the server goes away after the models were learned
    try:
        with pytest.raises(errors.Unavailable) as info:
            await run(eng.generate(req()))
        assert info.value.retry_after_s == 1.0
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await eng.stop()


async def test_closing_early_aborts_upstream(stack: InProcessStack, engine: OpenAIEngine) -> None:
    it = cast(AsyncGenerator[EngineOutput, None], engine.generate(req("sim-slow", max_tokens=500)))
    await it.__anext__()
    await it.__anext__()
    await it.aclose()
    await wait_until(lambda: stack.aborted == 1, what="the sim engine aborted the request")
    generated = stack.replicas[0].engine.stats.generated_tokens
    assert generated < 100


async def test_deadline_after_the_first_token_is_deadline_exceeded(engine: OpenAIEngine) -> None:
    got: list[EngineOutput] = []
    with pytest.raises(errors.DeadlineExceeded):
        async for out in engine.generate(req("sim-slow", max_tokens=500, deadline=time.monotonic() + 0.3)):
            got.append(out)
    assert got, "the failure came after the first token"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, errors.InvalidArgument),
        (422, errors.InvalidArgument),
        (401, errors.Unauthenticated),
        (403, errors.PermissionDenied),
        (429, errors.ResourceExhausted),
        (502, errors.Unavailable),
        (503, errors.Unavailable),
        (504, errors.DeadlineExceeded),
        # A server error is the replica's failure, retried elsewhere: never INTERNAL.
        (500, errors.Unavailable),
        (501, errors.Unavailable),
        (418, errors.Internal),
    ],
)
def test_error_for_status_table(status: int, expected: type[errors.AftershockError]) -> None:
    err = error_for_status(status, b'{"error": {"message": "upstream says no"}}')
    assert type(err) is expected
    assert err.message == "upstream says no"
    fallback = error_for_status(status, b"<html>not json</html>")
    assert fallback.message == f"Upstream server answered HTTP {status}."
    assert error_for_status(status, b'{"error": "plain string"}').message == "plain string"


async def _scripted_upstream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bursts: list[list[bytes]]
) -> None:
    """A raw HTTP/1.1 server that answers /v1/models, and streams completions in `bursts`: every
    event of a burst in one write, a pause between bursts."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        ),
        0,
    )
    await reader.readexactly(length)
    if head.startswith(b"GET"):
        body = orjson.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]})
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
    else:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for burst in bursts:
            writer.write(b"".join(b"data: " + e + b"\n\n" for e in burst))
            await writer.drain()
            await asyncio.sleep(0.05)
    await writer.drain()
    writer.close()


def _event(text: str | None = None, finish: str | None = None) -> bytes:
    return orjson.dumps({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


async def test_events_read_together_are_one_output() -> None:
    # What the upstream sent in one read is one output (one message on every hop after it); what
    # came apart stays apart, so nothing is held back waiting for more.
    bursts = [
        [_event("a"), _event("b"), _event("c")],
        [_event("d")],
        [_event("e"), _event(None, "length"), b"[DONE]"],
    ]
    server = await asyncio.start_server(lambda r, w: _scripted_upstream(r, w, bursts), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    eng = OpenAIEngine(f"http://127.0.0.1:{port}/v1", api_key="unused", timeout_s=10)
    try:
        await eng.start()
        _, outs = await run(eng.generate(req("m", max_tokens=5)))
    finally:
        await eng.stop()
        server.close()
    assert [list(o.tokens) for o in outs] == [["a", "b", "c"], ["d"], ["e"]]
    assert [o.completion_tokens for o in outs] == [3, 4, 5]
    assert [o.finish_reason for o in outs] == [None, None, "length"]
