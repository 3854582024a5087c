"""Request bodies decoded the way Toxiproxy's Go `encoding/json` decoder takes them.

Drills written against the real server rely on its leniency, so we keep it: the first JSON value of
the body is read (trailing bytes ignored), object keys match field names case-insensitively (the
last one wins), `null` leaves a field at its default, and a wrong type is a 400 whose message names
the Go field as Toxiproxy's does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from aftershock.faultproxy.errors import BadRequestBody

_DECODER = json.JSONDecoder()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def decode(body: bytes) -> Any:
    """The first JSON value in `body`."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequestBody(f"invalid UTF-8: {exc.reason}") from None
    text = text.lstrip(" \t\r\n")
    if not text:
        raise BadRequestBody("EOF")
    try:
        value, _ = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        raise BadRequestBody(f"invalid character at offset {exc.pos}: {exc.msg}") from None
    return value


def json_kind(value: object) -> str:
    """How Go names a JSON value's type in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def expect_object(value: object, go_type: str) -> Mapping[str, Any]:
    """`value` as an object; `null` decodes to an empty one, as into a Go struct."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestBody(f"json: cannot unmarshal {json_kind(value)} into Go value of type {go_type}")
    return value


def fields(obj: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """The known fields of `obj` by canonical name; keys match case-insensitively, nulls dropped."""
    by_fold = {name.casefold(): name for name in names}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = by_fold.get(key.casefold())
        if name is not None and value is not None:
            out[name] = value
    return out


def _mismatch(value: object, where: str, go_type: str) -> BadRequestBody:
    kind = json_kind(value)
    if kind == "number":
        kind = f"number {value}"
    return BadRequestBody(f"json: cannot unmarshal {kind} into Go struct field {where} of type {go_type}")


def as_str(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _mismatch(value, where, "string")
    return value


def as_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise _mismatch(value, where, "bool")
    return value


def as_int64(value: object, where: str) -> int:
    # Go rejects 1.0 and 1e3 for an integer field, and bool is not a number in JSON.
    if isinstance(value, bool) or not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
        raise _mismatch(value, where, "int64")
    return value


def as_float(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _mismatch(value, where, "float32")
    return float(value)
