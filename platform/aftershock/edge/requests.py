"""Reading and checking an HTTP request before it becomes a gRPC call."""

from __future__ import annotations

import re
import uuid
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from aftershock import errors
from aftershock.edge import errors as http_errors

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
M = TypeVar("M", bound=BaseModel)
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


class PayloadTooLarge(errors.InvalidArgument):
    """Maps to 413 at the edge (gRPC has no such code; it never leaves the edge)."""

    error_type = http_errors.REQUEST_TOO_LARGE


def request_id_of(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if _REQUEST_ID.match(given) else uuid.uuid4().hex


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"Request body is {declared} bytes; the limit is {limit}.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(body: bytes, model: type[M]) -> M:
    if not body:
        raise errors.InvalidArgument("Request body is empty; a JSON object is required.")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise errors.InvalidArgument(f"Request body is not valid UTF-8 (byte {exc.start}).") from None
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        raise _invalid(exc) from None


def _invalid(exc: ValidationError) -> errors.InvalidArgument:
    found = exc.errors(include_url=False)
    # For a union (content: string or list of parts) pydantic reports every member; the deepest
    # location is the member the client actually sent, so that is the error worth showing.
    head = found[0]["loc"][:1]
    first = max((e for e in found if e["loc"][:1] == head), key=lambda e: len(e["loc"]))
    if first["type"] == "json_invalid":
        return errors.InvalidArgument(f"Request body is not valid JSON: {first['msg']}.")
    if first["type"] == "model_type" and not first["loc"]:
        return errors.InvalidArgument("Request body must be a JSON object.")
    # Union members add their type name to the location ("content.str"); keep the field path only.
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    param = ".".join(loc) or None
    count = exc.error_count()
    more = f" (and {count - 1} more error{'s' if count > 2 else ''})" if count > 1 else ""
    return errors.InvalidArgument(f"Invalid value for '{param}': {first['msg']}{more}.", param=param)


def timeout_of(request: Request, default_s: float, max_s: float) -> float:
    """The client's timeout in seconds: x-request-timeout, or the openai SDK's x-stainless-timeout."""
    for header in ("x-request-timeout", "x-stainless-timeout"):
        raw = request.headers.get(header)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise errors.InvalidArgument(f"{header} must be a number of seconds.", param=header) from None
        if not value > 0:
            raise errors.InvalidArgument(f"{header} must be positive.", param=header)
        return min(value, max_s)
    return default_s


def _token_header(request: Request, name: str, shown: str) -> str:
    """A short printable header value ("" when absent), refused with 400 otherwise."""
    value = request.headers.get(name, "")
    if len(value) > 255 or not value.isprintable():
        raise errors.InvalidArgument(f"{shown} must be at most 255 printable characters.", param=shown)
    return value


def session_id_of(request: Request) -> str:
    """The client's opt-in x-session-id ("" when absent): a session's requests prefer one replica."""
    return _token_header(request, "x-session-id", "x-session-id")


def idempotency_key_of(request: Request) -> str:
    """The client's Idempotency-Key ("" when absent): one generation per key (backend dedupe)."""
    return _token_header(request, "idempotency-key", "Idempotency-Key")
