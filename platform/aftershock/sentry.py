"""Sentry error reporting, on only when SENTRY_DSN is set; events carry trace and request ids."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry import trace

from aftershock.context import request_id_var


def _tag(event: Any, hint: Any) -> Any:
    tags = event.setdefault("tags", {})
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        tags["trace_id"] = format(ctx.trace_id, "032x")
    request_id = request_id_var.get()
    if request_id:
        tags["request_id"] = request_id
    return event


def configure(service: str) -> bool:
    """Initialise sentry-sdk from SENTRY_DSN (and its other SENTRY_* variables); False when unset."""
    dsn = os.environ.get("SENTRY_DSN")
    if not dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(
        dsn=dsn,
        server_name=f"aftershock-{service}",
        # Errors only: traces go to OpenTelemetry. No request bodies (prompts) are sent, and no
        # personal data (sentry-sdk's default).
        traces_sample_rate=0.0,
        max_request_body_size="never",
        before_send=_tag,
    )
    sentry_sdk.set_tag("service", service)
    return True
