"""An OpenAI-compatible server's failures as our errors: which are the request's, which the replica's.

A server error (5xx but 504), a malformed event or a cut stream is the replica's failure: UNAVAILABLE,
so the backend tries another replica or resumes a seeded stream there. An upstream Retry-After is
carried as the error's retry_after, so the client (and the backend) learn how long the server asked
for.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

import orjson

from aftershock import errors

# What a client is told to wait when the upstream did not say.
DEFAULT_RETRY_AFTER_S = 1.0


def retry_after_of(headers: Mapping[str, str] | None) -> float | None:
    """An upstream Retry-After (seconds or an HTTP date) in seconds; None when absent or unreadable.
    `headers` looks names up case-insensitively (aiohttp's and httpx's headers both do)."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for_status(
    status: int, body: bytes, headers: Mapping[str, str] | None = None
) -> errors.AftershockError:
    """Upstream HTTP failure → our error, keeping the upstream message and Retry-After when it has them.

    A 5xx (other than 504) is this replica's failure, not the request's: UNAVAILABLE, so the backend
    tries another replica (or resumes a seeded stream there) instead of failing the request.
    """
    message = f"Upstream server answered HTTP {status}."
    try:
        detail = orjson.loads(body).get("error", {})
        if isinstance(detail, dict) and detail.get("message"):
            message = str(detail["message"])
        elif isinstance(detail, str):
            message = detail
    except (orjson.JSONDecodeError, AttributeError):
        pass
    retry_after = retry_after_of(headers)
    if status == 404:
        return _not_found(message)
    if status in (400, 422):
        return errors.InvalidArgument(message)
    if status == 401:
        return errors.Unauthenticated(message)
    if status == 403:
        return errors.PermissionDenied(message)
    if status == 429:
        # Only a server that said how long to wait parks this replica (hold_s); the default is a hint.
        return errors.ResourceExhausted(message, retry_after_s=_or_default(retry_after), hold_s=retry_after)
    if status == 504:
        return errors.DeadlineExceeded(message)
    if status >= 500:
        return errors.Unavailable(message, retry_after_s=_or_default(retry_after), hold_s=retry_after)
    return errors.Internal(message)


def _or_default(retry_after: float | None) -> float:
    return DEFAULT_RETRY_AFTER_S if retry_after is None else retry_after


# Error codes and types an SSE error event may carry (ours and OpenAI's), as HTTP statuses.
_STATUS_BY_CODE = {
    "timeout": 504,
    "rate_limit_exceeded": 429,
    "overloaded": 429,
    "engine_overloaded": 429,
    "service_unavailable": 503,
    "no_healthy_replica": 503,
    "circuit_open": 503,
    "model_not_found": 404,
    "invalid_request_error": 400,
    "rate_limit_error": 429,
}


def stream_error_status(error: object) -> int:
    """The HTTP status an error event mid-stream stands for: a numeric code or status (vLLM), else our
    string code or OpenAI's error type; 500 when nothing says more."""
    if not isinstance(error, dict):
        return 500
    for key in ("status", "code"):
        value = error.get(key)
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
            return int(value)
    for key in ("code", "type"):
        status = _STATUS_BY_CODE.get(str(error.get(key)))
        if status is not None:
            return status
    return 500


def _not_found(message: str) -> errors.AftershockError:
    err = errors.AftershockError(message, error_type="model_not_found")
    err.code = errors.ModelNotFound.code
    return err
