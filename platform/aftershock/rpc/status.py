"""Conversions between gRPC status (with our trailing metadata) and domain errors."""

from __future__ import annotations

import grpc

from aftershock import errors

_BY_CODE: dict[grpc.StatusCode, type[errors.AftershockError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.INTERNAL: errors.Internal,
}


def metadata_value(md: object, key: str) -> str | None:
    if not md:
        return None
    for item in md:  # type: ignore[attr-defined]
        k, v = item
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def error_from_rpc(exc: grpc.aio.AioRpcError) -> errors.AftershockError:
    """Keep a downstream failure's code, message and metadata as it travels upstream."""
    code = exc.code()
    md = exc.trailing_metadata()
    details = exc.details() or code.name
    error_type = metadata_value(md, errors.ERROR_TYPE_KEY)
    param = metadata_value(md, errors.ERROR_PARAM_KEY)
    retry_ms = metadata_value(md, errors.RETRY_AFTER_KEY)
    retry_after = int(retry_ms) / 1000 if retry_ms and retry_ms.isdigit() else None
    hold_ms = metadata_value(md, errors.HOLD_KEY)
    hold = int(hold_ms) / 1000 if hold_ms and hold_ms.isdigit() else None
    if code == grpc.StatusCode.NOT_FOUND:
        err: errors.AftershockError = errors.AftershockError(details, param=param, error_type=error_type)
        err.code = grpc.StatusCode.NOT_FOUND
        if error_type is None:
            err.error_type = "not_found"
        return err
    cls = _BY_CODE.get(code)
    if cls is None:
        # UNKNOWN, DATA_LOSS, UNIMPLEMENTED, ...: keep the code rather than collapsing it.
        err = errors.AftershockError(
            details, param=param, error_type=error_type, retry_after_s=retry_after, hold_s=hold
        )
        err.code = code
        return err
    return cls(details, param=param, error_type=error_type, retry_after_s=retry_after, hold_s=hold)


RETRYABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
