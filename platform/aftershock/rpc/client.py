"""Client-side gRPC helpers: channels with the options every hop uses."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Reconnect quickly after a replica restarts; routing skips it while it is down.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
    ("grpc.enable_retries", 0),
)


def insecure_channel(
    target: str,
    interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    options: Sequence[tuple[str, int | str]] = (),
) -> grpc.aio.Channel:
    """Our own retry policy lives in the backend; gRPC's transparent retries are switched off above.

    Calls are traced where they are made (aftershock.rpc.tracing), not by a client interceptor.
    """
    return grpc.aio.insecure_channel(
        target, options=(*CHANNEL_OPTIONS, *options), interceptors=list(interceptors) or None
    )


def end_call(call: grpc.aio.Call, *, complete: bool, code: str) -> None:
    """Cancel a call this side stops reading, unless its last message came and it ended well.

    Cancelling a call whose last message came would tear down the server's handler as it finishes
    normally (and log a spurious error there); any other end (an error, the caller gone, a
    timeout) must cancel it so the server stops work nobody will read.
    """
    if not complete or code != "OK":
        call.cancel()
