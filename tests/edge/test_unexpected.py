"""A bug in the edge still answers in OpenAI's error shape, never Starlette's plain-text 500."""

from __future__ import annotations

import httpx
import pytest
from aftershock.edge import responses
from aftershock.v1 import generation_pb2 as pb

from tests.edge.live import ScriptedBackend, in_thread, scripted_edge


def test_a_bug_in_the_edge_is_still_openais_error_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("a bug")

    done = pb.GenerateResponse(tokens=["a"], completion_tokens=1, finish_reason=pb.FINISH_REASON_STOP)
    backend = ScriptedBackend(lambda _: [done])
    monkeypatch.setattr(responses, "body", broken)
    body = {"model": "sim-x", "messages": [{"role": "user", "content": "hi"}]}
    with in_thread(lambda: scripted_edge(backend)) as url, httpx.Client(base_url=url, timeout=10) as client:
        resp = client.post("/v1/chat/completions", json=body, headers={"x-request-id": "req-bug"})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"] == "req-bug"
    assert resp.json()["error"] == {
        "message": "The server had an error processing the request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
        "request_id": "req-bug",
    }
