"""vLLM's exceptions as Aftershock errors, so each reaches the client with its own status.

vLLM 0.33's exceptions do not subclass ValueError or RuntimeError (VLLMError is a plain Exception),
so catching those let every one of them surface as INTERNAL and never be retried.
"""

from __future__ import annotations

from http import HTTPStatus

from aftershock import errors
from aftershock.inference.vllm_api import VllmErrors

# How long a client should wait before retrying an engine that refused or lost its request.
RETRY_AFTER_S = 5.0


def map_error(exc: BaseException, known: VllmErrors) -> errors.AftershockError | None:
    """The Aftershock error for one of vLLM's exceptions; None for anything else (the caller re-raises).

    EngineDeadError is mapped to UNAVAILABLE here; stopping the replica is the engine's job.
    """
    if isinstance(exc, known.engine_dead):
        # The client sees no internals; the cause is in the replica's log.
        return errors.Unavailable(
            "The inference engine stopped; retry on another replica.", retry_after_s=RETRY_AFTER_S
        )
    if isinstance(exc, known.client):
        return errors.InvalidArgument(str(exc), param=getattr(exc, "parameter", None))
    if isinstance(exc, known.graceful_http):
        status = int(getattr(exc, "http_status", HTTPStatus.INTERNAL_SERVER_ERROR))
        message = str(getattr(exc, "message", "") or exc)
        if status in (HTTPStatus.SERVICE_UNAVAILABLE, HTTPStatus.TOO_MANY_REQUESTS):
            # Admission control (queue or queued-token limit): overload, try another replica.
            return errors.ResourceExhausted(message, retry_after_s=1.0)
        if 400 <= status < 500:
            return errors.InvalidArgument(message)
        return errors.Internal(message)
    if isinstance(exc, known.retryable | known.engine_generate):
        # A request-level failure with the engine still alive: safe to retry elsewhere.
        return errors.Unavailable("The inference engine failed this request; retry it.", retry_after_s=1.0)
    if isinstance(exc, known.generation):
        return errors.Internal("The inference engine failed to generate.")
    if isinstance(exc, ValueError):
        # Older vLLM releases and the tokenizer validate with plain ValueError.
        return errors.InvalidArgument(str(exc))
    return None
