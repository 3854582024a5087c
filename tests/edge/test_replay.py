"""The edge names each response (id, created) and tells the backend; a replay keeps the original's.

A scripted Backend gRPC server over loopback plays the backend's dedupe: its first message carries
the original response's completion_id and created (and the model a fallback served), and the edge
must answer with those, streamed or not, for both endpoints.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx
import pytest
from aftershock.v1 import generation_pb2 as pb

from tests.edge.live import ScriptedBackend, in_thread, scripted_edge

Script = Callable[[pb.GenerateRequest], Sequence[pb.GenerateResponse]]

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
BODIES: dict[str, dict[str, Any]] = {
    CHAT: {"model": "sim-x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    COMPLETIONS: {"model": "sim-x", "prompt": "Once", "max_tokens": 3},
}
PREFIX = {CHAT: "chatcmpl-", COMPLETIONS: "cmpl-"}
ORIGINAL_CREATED = 1_600_000_000


def replay(completion_id: str = "", created: int = 0, model: str = "") -> Script:
    """Three tokens in two messages; the first names the response as the backend says."""

    def script(request: pb.GenerateRequest) -> Sequence[pb.GenerateResponse]:
        first = pb.GenerateResponse(
            tokens=["a", "b"],
            prompt_tokens=2,
            completion_tokens=2,
            attempts=1,
            completion_id=completion_id,
            created=created,
            model=model,
        )
        last = pb.GenerateResponse(
            tokens=["c"],
            prompt_tokens=2,
            completion_tokens=3,
            finish_reason=pb.FINISH_REASON_LENGTH,
            attempts=1,
        )
        return [first, last]

    return script


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ScriptedBackend, httpx.Client]]:
    backend = ScriptedBackend(replay())
    with in_thread(lambda: scripted_edge(backend)) as url, httpx.Client(base_url=url, timeout=10) as client:
        yield backend, client


def answer(client: httpx.Client, path: str, stream: bool) -> list[dict[str, Any]]:
    """The response's JSON objects: the body, or every chunk of the stream."""
    body = (
        {**BODIES[path], "stream": True, "stream_options": {"include_usage": True}}
        if stream
        else BODIES[path]
    )
    resp = client.post(path, json=body, headers={"x-request-id": "req-new"})
    assert resp.status_code == 200, resp.text
    if not stream:
        return [resp.json()]
    events = [e for e in resp.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    return [json.loads(e.removeprefix("data: ")) for e in events[:-1]]


def text_of(objects: list[dict[str, Any]]) -> str:
    text = ""
    for choice in (o["choices"][0] for o in objects if o["choices"]):
        text += choice.get("text") or choice.get("message", choice.get("delta", {})).get("content") or ""
    return text


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_a_replay_answers_with_the_original_id_created_and_model(
    served: tuple[ScriptedBackend, httpx.Client], path: str, stream: bool
) -> None:
    backend, client = served
    original = PREFIX[path] + "req-original"
    backend.script = replay(original, ORIGINAL_CREATED, "sim-fallback")
    objects = answer(client, path, stream)
    assert {(o["id"], o["created"], o["model"]) for o in objects} == {
        (original, ORIGINAL_CREATED, "sim-fallback")
    }
    assert text_of(objects) == "abc"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_the_edge_names_a_new_response_and_tells_the_backend(
    served: tuple[ScriptedBackend, httpx.Client], path: str, stream: bool
) -> None:
    backend, client = served
    backend.script = replay()  # a first generation: the backend sets nothing
    before = int(time.time())
    objects = answer(client, path, stream)
    sent = backend.requests[-1]
    assert sent.completion_id == PREFIX[path] + "req-new"
    assert before <= sent.created <= int(time.time())
    # The response carries what the edge told the backend, and echoes the requested model.
    assert {(o["id"], o["created"], o["model"]) for o in objects} == {
        (sent.completion_id, sent.created, "sim-x")
    }
    assert text_of(objects) == "abc"


def test_an_original_id_without_created_keeps_the_edges_created(
    served: tuple[ScriptedBackend, httpx.Client],
) -> None:
    backend, client = served
    backend.script = replay("chatcmpl-orig")
    (body,) = answer(client, CHAT, stream=False)
    assert (body["id"], body["created"]) == ("chatcmpl-orig", backend.requests[-1].created)
