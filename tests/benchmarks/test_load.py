"""The load generator's own correctness: SSE counting across reads, errors kept, open-loop timing."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aftershock.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from load import HttpTarget, Result, SseCounter, closed_loop, interleaved_open_loops, open_loop

STREAM = (
    b'data: {"choices":[{"index":0,"text":" a","finish_reason":null}],"usage":null}\n\n'
    b'data: {"choices":[{"index":0,"text":" b c","finish_reason":null}],"usage":null}\n\n'
    b'data: {"choices":[{"index":0,"text":"","finish_reason":"length"}],"usage":null}\n\n'
    b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,"total_tokens":5}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 3, 7, 64, len(STREAM)])
def test_sse_counter_finds_everything_whatever_the_reads(size: int) -> None:
    sse = SseCounter()
    for at in range(0, len(STREAM), size):
        sse.feed(STREAM[at : at + size])
    assert sse.done
    assert sse.tokens == 3  # from the usage event, not max_tokens and not the event count
    assert sse.content_events == 2 and sse.events == 4


def test_done_split_across_reads_is_found() -> None:
    sse = SseCounter()
    cut = len(STREAM) - 5  # "data: [DO" | "NE]\n\n"
    sse.feed(STREAM[:cut])
    assert not sse.done
    sse.feed(STREAM[cut:])
    assert sse.done


def test_without_usage_content_events_are_counted() -> None:
    sse = SseCounter()
    sse.feed(b"".join(e + b"\n\n" for e in STREAM.split(b"\n\n") if b'"usage":{' not in e and e))
    assert sse.done and sse.usage_tokens is None and sse.tokens == 2


def test_a_stream_cut_short_has_no_done() -> None:
    sse = SseCounter()
    sse.feed(STREAM[:100])
    assert not sse.done


async def test_failed_requests_are_kept_with_their_error() -> None:
    async def send(i: int, due: float) -> Result:
        if i % 2:
            raise ConnectionResetError
        return Result(time.perf_counter() - due, 0, 1, 1, True)

    run = await closed_loop(send, 4, 10)
    assert len(run.results) == 10 and len(run.ok()) == 5
    assert run.errors() == {"ConnectionResetError": 5}


async def test_open_loop_latency_counts_from_the_scheduled_arrival() -> None:
    """A generator stalled for 300 ms must not hide the wait from the requests due meanwhile."""

    async def send(i: int, due: float) -> Result:
        if i == 0:
            time.sleep(0.3)  # noqa: ASYNC251 - stalls the generator: arrivals due now are sent late
        now = time.perf_counter()
        return Result(now - due, now - due, 1, 1, True)

    run = await open_loop(send, rate=100, duration_s=0.5, seed=3)
    late = sorted(r.latency_s for r in run.results)
    assert len(late) > 20
    assert late[len(late) // 2] > 0.05  # most requests were due during the stall


async def test_interleaved_targets_take_turns_within_one_window() -> None:
    """Each target is offered the rate only during its own blocks, and every cycle visits each once."""
    sent: dict[str, list[float]] = {"a": [], "b": [], "c": []}
    start = time.perf_counter()

    def sender(name: str):  # type: ignore[no-untyped-def]
        async def send(i: int, due: float) -> Result:
            sent[name].append(due - start)
            return Result(time.perf_counter() - due, 0, 1, 1, True)

        return send

    runs = await interleaved_open_loops(
        {name: sender(name) for name in sent}, rate=200, duration_s=0.4, block_s=0.1, seed=5
    )
    assert sorted(runs) == ["a", "b", "c"]
    for name, dues in sent.items():
        assert len(runs[name].results) == len(dues) > 40  # ~80 each at 200/s for 0.4 s
        assert runs[name].wall_s == pytest.approx(0.4, abs=0.1)
    first = min(min(dues) for dues in sent.values())  # the loop's start: its first arrival
    block_of: dict[int, set[str]] = {}
    for name, dues in sent.items():
        for due in dues:
            block_of.setdefault(int((due - first) / 0.1), set()).add(name)
    assert len(block_of) == 12  # 3 targets x 0.4 s in blocks of 0.1 s
    assert all(len(names) == 1 for names in block_of.values())  # one target per block
    turns = [block_of[b].pop() for b in sorted(block_of)]
    for cycle in range(4):
        assert sorted(turns[cycle * 3 : cycle * 3 + 3]) == ["a", "b", "c"]
    assert len({tuple(turns[c * 3 : c * 3 + 3]) for c in range(4)}) > 1  # the order changes


@pytest.fixture
def short_upstream() -> Iterator[str]:
    """benchmarks/upstream.py replying with 5 tokens whatever max_tokens asks, as a stop string would."""
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "benchmarks" / "upstream.py"), "--port", str(port), "--tokens", "5"]
    proc = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("stream", [False, True])
async def test_tokens_are_what_came_back_not_what_was_asked(short_upstream: str, stream: bool) -> None:
    target = HttpTarget(short_upstream, "peer-model", 16, stream, 4)
    try:
        result = await target.send(0, time.perf_counter())
    finally:
        await target.close()
    assert result.ok and result.tokens == 5
