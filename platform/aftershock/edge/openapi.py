"""The edge's OpenAPI document (GET /openapi.json), for clients, code generators and API fuzzers.

Request schemas are the validating models themselves (schema.py), so the document cannot drift from
what the edge accepts. The response models below only describe: the hot path writes pre-encoded
bytes (responses.py), and tests validate real responses against these schemas to keep them honest.
A stream's `data:` payloads are described under the `x-sse-data` extension of its text/event-stream
media type (OpenAPI 3.1 has no field for the items of a stream).
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from aftershock.edge.endpoints import CHAT_COMPLETIONS, COMPLETIONS
from aftershock.edge.schema import ChatCompletionRequest, CompletionRequest

_REF = "#/components/schemas/{model}"
_CLOSED = ConfigDict(extra="forbid")
Finish = Literal["stop", "length"]


class ErrorObject(BaseModel):
    model_config = _CLOSED
    message: str
    type: str
    param: str | None
    code: str | None
    request_id: str = Field("", description="The x-request-id of the request (absent when unknown).")


class ErrorResponse(BaseModel):
    """Every non-200 answer, and an error event that ends a stream after its first byte."""

    model_config = _CLOSED
    error: ErrorObject


class Usage(BaseModel):
    model_config = _CLOSED
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)


class AssistantMessage(BaseModel):
    model_config = _CLOSED
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    model_config = _CLOSED
    index: int
    message: AssistantMessage
    logprobs: None
    finish_reason: Finish


class _Completion(BaseModel):
    model_config = _CLOSED
    id: str
    created: int = Field(description="Unix seconds; a replayed response keeps the original's.")
    model: str = Field(description="The model that served (a fallback may differ from the one asked).")


class ChatCompletion(_Completion):
    id: str = Field(pattern="^chatcmpl-")
    object: Literal["chat.completion"]
    choices: list[ChatChoice] = Field(min_length=1, max_length=1)
    usage: Usage


class ChatDelta(BaseModel):
    model_config = _CLOSED
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    model_config = _CLOSED
    index: int
    delta: ChatDelta
    logprobs: None
    finish_reason: Finish | None


class ChatCompletionChunk(_Completion):
    id: str = Field(pattern="^chatcmpl-")
    object: Literal["chat.completion.chunk"]
    choices: list[ChatChunkChoice] = Field(max_length=1, description="Empty in the final usage chunk.")
    usage: Usage | None = Field(None, description="With stream_options.include_usage: null, then set last.")


class TextChoice(BaseModel):
    model_config = _CLOSED
    index: int
    text: str
    logprobs: None
    finish_reason: Finish


class TextCompletion(_Completion):
    id: str = Field(pattern="^cmpl-")
    object: Literal["text_completion"]
    choices: list[TextChoice] = Field(min_length=1, max_length=1)
    usage: Usage


class TextChunkChoice(BaseModel):
    model_config = _CLOSED
    index: int
    text: str
    logprobs: None
    finish_reason: Finish | None


class TextCompletionChunk(_Completion):
    id: str = Field(pattern="^cmpl-")
    object: Literal["text_completion"]
    choices: list[TextChunkChoice] = Field(max_length=1, description="Empty in the final usage chunk.")
    usage: Usage | None = Field(None, description="With stream_options.include_usage: null, then set last.")


class Model(BaseModel):
    model_config = _CLOSED
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int | None
    ready_replicas: int = Field(ge=0)


class ModelList(BaseModel):
    model_config = _CLOSED
    object: Literal["list"]
    data: list[Model]


_SCHEMAS: list[type[BaseModel]] = [
    ChatCompletionRequest,
    CompletionRequest,
    ChatCompletion,
    ChatCompletionChunk,
    TextCompletion,
    TextCompletionChunk,
    ModelList,
    ErrorResponse,
]
_ERRORS = {
    "400": "Invalid request (a field, a header, or JSON that does not parse).",
    "401": "Missing or unknown API key.",
    "403": "The API key may not use this model.",
    "404": "Unknown model or endpoint.",
    "413": "Request body over the size limit.",
    "429": "Rate limit reached or the edge is overloaded; see Retry-After.",
    "503": "No replica can serve now; see Retry-After.",
    "504": "The request's timeout passed.",
    "default": "Any other error, in the same shape.",
}
_HEADERS = [
    ("x-request-id", "Echoed on the response; generated when absent or unsafe."),
    ("x-request-timeout", "Seconds the client waits (capped by the edge)."),
    ("x-stainless-timeout", "The openai SDK's timeout, used when x-request-timeout is absent."),
    ("Idempotency-Key", "At most 255 printable characters: one generation, one response per key."),
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _errors() -> dict[str, Any]:
    content = {"application/json": {"schema": _ref("ErrorResponse")}}
    return {status: {"description": text, "content": content} for status, text in _ERRORS.items()}


def _completion_path(request: str, body: str, chunk: str, summary: str) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "header", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in _HEADERS
    ]
    stream = {
        "schema": {"type": "string", "description": "`data: <json>` events, then `data: [DONE]`."},
        "x-sse-data": {"oneOf": [_ref(chunk), _ref("ErrorResponse")]},
    }
    return {
        "post": {
            "summary": summary,
            "parameters": parameters,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(request)}}},
            "responses": {
                "200": {
                    "description": "The completion; with `stream: true`, server-sent events.",
                    "content": {"application/json": {"schema": _ref(body)}, "text/event-stream": stream},
                },
                **_errors(),
            },
        }
    }


def _version() -> str:
    try:
        return version("aftershock")
    except PackageNotFoundError:
        return "0.0.0"


@cache
def document() -> dict[str, Any]:
    _, defs = models_json_schema([(m, "validation") for m in _SCHEMAS], ref_template=_REF)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Aftershock edge",
            "version": _version(),
            "description": "OpenAI-compatible chat completions, completions and model list.",
        },
        "paths": {
            CHAT_COMPLETIONS.path: _completion_path(
                "ChatCompletionRequest", "ChatCompletion", "ChatCompletionChunk", "Create a chat completion"
            ),
            COMPLETIONS.path: _completion_path(
                "CompletionRequest", "TextCompletion", "TextCompletionChunk", "Create a text completion"
            ),
            "/v1/models": {
                "get": {
                    "summary": "List the models this API key may use",
                    "responses": {
                        "200": {
                            "description": "The models.",
                            "content": {"application/json": {"schema": _ref("ModelList")}},
                        },
                        **_errors(),
                    },
                }
            },
        },
        "components": {
            "schemas": defs["$defs"],
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        # Keys are optional on a local stack (auth off); a configured edge requires one.
        "security": [{"bearer": []}, {}],
    }


def encoded() -> bytes:
    return orjson.dumps(document())
