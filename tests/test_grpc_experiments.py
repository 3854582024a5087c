"""aftershock.grpc_experiments: the variable's default and precedence, and its effect on the
real services: their outgoing channels' reads stay off gRPC's EventEngine threads."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from aftershock import grpc_experiments
from aftershock.stack import Stack

from tests import CALLER_VALUE
from tests.stack_support import running_stack

# Enough messages that the pool threads' own background wake-ups (timers) are a small part.
STREAMS, TOKENS = 32, 32
CHOOSE = "from aftershock import grpc_experiments as g; print('[' + g.choose() + ']')"


def _chosen(env_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != grpc_experiments.VARIABLE}
    if env_value is not None:
        env[grpc_experiments.VARIABLE] = env_value
    out = subprocess.run([sys.executable, "-c", CHOOSE], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().removeprefix("[").removesuffix("]")


def test_unset_gets_the_default() -> None:
    assert _chosen(None) == "-event_engine_client"


@pytest.mark.parametrize("value", ["", "-event_engine_listener"])
def test_an_operators_value_is_left_alone(value: str) -> None:
    assert _chosen(value) == value


def test_too_late_once_grpc_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc  # noqa: F401  # already imported by the suite; named here for the reader

    monkeypatch.delenv(grpc_experiments.VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match="before grpc is imported"):
        grpc_experiments.choose()
    assert grpc_experiments.VARIABLE not in os.environ


def _event_engine_switches(pid: int) -> int:
    """Voluntary context switches of the process's gRPC EventEngine pool threads."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "comm").read_text().strip() != "event_engine":
                continue
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return total


async def _stream_events(base_url: str, streams: int) -> int:
    """SSE events received over `streams` concurrent streamed completions (sim-slow: one message
    per token, 20 ms apart, so every one is a separate read on each hop)."""

    async def one(client: httpx.AsyncClient) -> int:
        body = {"model": "sim-slow", "prompt": "hops", "max_tokens": TOKENS, "stream": True}
        events = 0
        async with client.stream("POST", "/v1/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
        return events

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        return sum(await asyncio.gather(*(one(client) for _ in range(streams))))


def _switches_per_event(stack: Stack) -> float:
    assert stack.edge is not None and stack.backend is not None
    pids = (stack.edge.popen.pid, stack.backend.popen.pid)
    asyncio.run(_stream_events(stack.edge_url, 4))  # connections up before counting
    before = sum(_event_engine_switches(pid) for pid in pids)
    events = asyncio.run(_stream_events(stack.edge_url, STREAMS))
    after = sum(_event_engine_switches(pid) for pid in pids)
    assert events >= STREAMS * TOKENS
    return (after - before) / events


@pytest.mark.e2e
def test_services_read_their_channels_without_event_engine_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unset, as in a user's shell (the suite chose it for itself): the `aftershock` command chooses.
    monkeypatch.delenv(grpc_experiments.VARIABLE)
    with running_stack("test_grpc_experiments", replicas=1) as stack:
        chosen = _switches_per_event(stack)
    # The control: with gRPC's own defaults the same measure sees every read hop threads.
    grpc_default = {grpc_experiments.VARIABLE: ""}
    env = {"edge": grpc_default, "backend": grpc_default, "inference": grpc_default}
    with running_stack("test_grpc_experiments-control", replicas=1, env=env) as stack:
        control = _switches_per_event(stack)
    assert control > 1.0, f"the measure did not see EventEngine reads with gRPC's defaults: {control:.2f}"
    assert chosen < 0.5, f"{chosen:.2f} EventEngine wake-ups per SSE event (gRPC's defaults: {control:.2f})"


@pytest.mark.skipif(CALLER_VALUE is not None, reason="the caller chose the gRPC experiments")
def test_the_suite_runs_grpc_as_the_services_do() -> None:
    # tests/__init__.py chose before grpc was imported (choose() raises otherwise), so the
    # in-process servers and channels run with what `aftershock` gives the services.
    assert os.environ[grpc_experiments.VARIABLE] == grpc_experiments.DEFAULT
