"""GET /openapi.json describes what the edge really answers: real responses (bodies, every SSE chunk,
errors) from an edge over a real backend validate against the document's own schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from aftershock.v1 import generation_pb2 as pb
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from tests.edge.live import FUZZ_MODEL, Abort, ScriptedBackend, in_thread, scripted_edge, sim_edge

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
GOOD: dict[str, dict[str, Any]] = {
    CHAT: {
        "model": FUZZ_MODEL.name,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5,
        "seed": 1,
    },
    COMPLETIONS: {"model": FUZZ_MODEL.name, "prompt": "Once", "max_tokens": 5, "seed": 1},
}


@pytest.fixture(scope="module")
def http(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp: Path = tmp_path_factory.mktemp("openapi")
    with in_thread(lambda: sim_edge(tmp)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def doc(http: httpx.Client) -> dict[str, Any]:
    resp = http.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    document: dict[str, Any] = resp.json()
    return document


def validator(doc: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A validator for one schema of the document, resolving its $refs against the document."""
    return Draft202012Validator({**schema, "components": doc["components"]})


def media_schema(doc: dict[str, Any], path: str, method: str, status: str, media: str) -> dict[str, Any]:
    content = doc["paths"][path][method]["responses"][status]["content"][media]
    schema: dict[str, Any] = content["x-sse-data"] if media == "text/event-stream" else content["schema"]
    return schema


def check(doc: dict[str, Any], resp: httpx.Response) -> list[dict[str, Any]]:
    """Validates a real response against the operation's schema for its status and media type."""
    op = doc["paths"][resp.request.url.path][resp.request.method.lower()]
    status = str(resp.status_code) if str(resp.status_code) in op["responses"] else "default"
    media = resp.headers["content-type"].split(";")[0]
    schema = media_schema(doc, resp.request.url.path, resp.request.method.lower(), status, media)
    if media == "text/event-stream":
        events = [e for e in resp.text.split("\n\n") if e]
        # A stream ends with [DONE], or with an error event after its first byte.
        done = events[-1] == "data: [DONE]"
        objects = [json.loads(e.removeprefix("data: ")) for e in (events[:-1] if done else events)]
        assert done or "error" in objects[-1], events[-1]
    else:
        objects = [resp.json()]
    for obj in objects:
        validator(doc, schema).validate(obj)
    return objects


def test_the_document_is_openapi_3_1_with_valid_schemas(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == {CHAT, COMPLETIONS, "/v1/models"}
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
def test_request_schema_matches_what_the_edge_accepts(doc: dict[str, Any], path: str) -> None:
    body_schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    v = validator(doc, body_schema)
    v.validate(GOOD[path])
    for bad in ({"max_tokens": 2**32}, {"max_tokens": 0}, {"temperature": 3}, {"n": 2}, {"seed": 2**63}):
        with pytest.raises(ValidationError):
            v.validate({**GOOD[path], **bad})


@pytest.mark.parametrize("path", [CHAT, COMPLETIONS])
@pytest.mark.parametrize("stream", [None, {}, {"include_usage": True}])
def test_completions_validate(
    http: httpx.Client, doc: dict[str, Any], path: str, stream: dict[str, bool] | None
) -> None:
    body = GOOD[path] if stream is None else {**GOOD[path], "stream": True, "stream_options": stream}
    resp = http.post(path, json=body)
    assert resp.status_code == 200, resp.text
    objects = check(doc, resp)
    assert len(objects) >= (1 if stream is None else 3)


def test_models_validate(http: httpx.Client, doc: dict[str, Any]) -> None:
    resp = http.get("/v1/models")
    assert resp.status_code == 200
    (models,) = check(doc, resp)
    assert [m["id"] for m in models["data"]] == [FUZZ_MODEL.name]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        (CHAT, {**GOOD[CHAT], "max_tokens": 2**32}, 400),
        (CHAT, {**GOOD[CHAT], "model": "nope"}, 404),
        (COMPLETIONS, {**GOOD[COMPLETIONS], "max_tokens": 10_000}, 400),
        (COMPLETIONS, {**GOOD[COMPLETIONS], "prompt": "x" * 2_000_000}, 413),
    ],
)
def test_errors_validate(
    http: httpx.Client, doc: dict[str, Any], path: str, body: dict[str, Any], status: int
) -> None:
    resp = http.post(path, json=body)
    assert resp.status_code == status, resp.text
    check(doc, resp)


def test_a_mid_stream_error_event_validates(doc: dict[str, Any]) -> None:
    def fails_after_one(request: pb.GenerateRequest) -> Iterator[pb.GenerateResponse]:
        yield pb.GenerateResponse(tokens=["a"], prompt_tokens=1, completion_tokens=1, attempts=1)
        raise Abort(grpc.StatusCode.UNAVAILABLE, "replica lost")

    backend = ScriptedBackend(fails_after_one)
    body = {**GOOD[CHAT], "model": "sim-x", "stream": True}
    with in_thread(lambda: scripted_edge(backend)) as url, httpx.Client(base_url=url, timeout=10) as client:
        resp = client.post(CHAT, json=body)
    objects = check(doc, resp)
    assert "error" in objects[-1] and objects[-1]["error"]["type"] == "server_error"


def test_a_response_that_breaks_the_schema_is_caught(doc: dict[str, Any]) -> None:
    """The schemas are closed: a stray or missing field fails validation (so the checks above bite)."""
    schema = media_schema(doc, CHAT, "post", "200", "application/json")
    good = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "x"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    validator(doc, schema).validate(good)
    for broken in (
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "usage"},
        {**good, "id": "x"},
    ):
        with pytest.raises(ValidationError):
            validator(doc, schema).validate(broken)
