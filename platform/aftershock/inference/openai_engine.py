"""An existing OpenAI-compatible server (vLLM serve, TGI, llama.cpp server) behind the Engine protocol.

Streams every request (stream=true, usage included) so that time to first token and cancellation
work the same as with in-process engines; closing the iterator closes the HTTP response, which
these servers take as an abort.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import orjson

from aftershock import errors
from aftershock.inference.engine import EngineOutput, EngineRequest, FinishReason, ModelSpec

log = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "eos": "stop",
    "error": "error",
    "repetition": "repetition",
}


def error_for_status(status: int, body: bytes) -> errors.AftershockError:
    """Upstream HTTP failure → our error, keeping the upstream message when it has one."""
    message = f"Upstream server answered HTTP {status}."
    try:
        detail = orjson.loads(body).get("error", {})
        if isinstance(detail, dict) and detail.get("message"):
            message = str(detail["message"])
        elif isinstance(detail, str):
            message = detail
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if status == 404:
        return _not_found(message)
    if status in (400, 422):
        return errors.InvalidArgument(message)
    if status == 401:
        return errors.Unauthenticated(message)
    if status == 403:
        return errors.PermissionDenied(message)
    if status == 429:
        return errors.ResourceExhausted(message, retry_after_s=1.0)
    if status in (502, 503):
        return errors.Unavailable(message, retry_after_s=1.0)
    if status == 504:
        return errors.DeadlineExceeded(message)
    return errors.Internal(message)


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


class OpenAIEngine:
    kind = "openai"

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        default_max_model_len: int = 8192,
        default_max_output_tokens: int = 4096,
        timeout_s: float = 600.0,
        reproducible: bool = False,
    ) -> None:
        # Only the operator knows whether the upstream server is batch invariant (vLLM with
        # VLLM_BATCH_INVARIANT=1): off unless configured.
        self.reproducible = reproducible
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/",
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
        )
        self._default_len = default_max_model_len
        self._default_out = default_max_output_tokens
        self._models: dict[str, ModelSpec] = {}

    @classmethod
    def from_settings(cls, settings: Any, registry: object) -> OpenAIEngine:
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        return cls(
            settings.openai_base_url,
            api_key=key,
            default_max_model_len=settings.openai_max_model_len,
            default_max_output_tokens=settings.openai_max_output_tokens,
            timeout_s=settings.openai_timeout_s,
            reproducible=settings.openai_reproducible,
        )

    async def start(self) -> None:
        """Learn the served models (vLLM reports max_model_len; others get the configured default)."""
        resp = await self._client.get("models")
        resp.raise_for_status()
        for item in resp.json().get("data", []):
            max_len = int(item.get("max_model_len") or self._default_len)
            self._models[item["id"]] = ModelSpec(
                item["id"], max_len, min(max_len, self._default_out), self.kind
            )
        log.info("openai engine ready", extra={"models": sorted(self._models)})

    async def stop(self) -> None:
        await self._client.aclose()

    def models(self) -> Sequence[ModelSpec]:
        return list(self._models.values())

    def _body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "model": request.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.max_tokens:
            body["max_tokens"] = request.max_tokens
        for key in ("temperature", "top_p", "seed"):
            value = getattr(request, key)
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.messages is not None:
            body["messages"] = [{"role": m.role, "content": m.content} for m in request.messages]
            return "chat/completions", body
        if request.prompt is None:
            raise errors.InvalidArgument("A prompt or chat messages are required.", param="prompt")
        body["prompt"] = request.prompt
        return "completions", body

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        spec = self._models.get(request.model)
        if spec is None:
            raise errors.ModelNotFound(request.model)
        if request.max_tokens > spec.max_output_tokens:
            raise errors.InvalidArgument(
                f"max_tokens is {request.max_tokens}, above this model's limit of {spec.max_output_tokens}.",
                param="max_tokens",
            )
        path, body = self._body(request)
        return self._stream(path, body, request)

    async def _stream(
        self, path: str, body: dict[str, Any], request: EngineRequest
    ) -> AsyncIterator[EngineOutput]:
        arrival = time.monotonic()
        timeout = None if request.deadline is None else max(0.001, request.deadline - arrival)
        headers = {"x-request-id": request.request_id}
        if timeout is not None:
            headers["x-request-timeout"] = f"{timeout:.3f}"
        chat = path.startswith("chat")
        completion = 0
        prompt_tokens = 0
        first_at = 0.0
        finish: FinishReason | None = None
        try:
            async with self._client.stream("POST", path, json=body, headers=headers, timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise error_for_status(resp.status_code, await resp.aread())
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    chunk = orjson.loads(data)
                    if "error" in chunk:
                        raise error_for_status(stream_error_status(chunk["error"]), orjson.dumps(chunk))
                    if chunk.get("usage"):
                        prompt_tokens = int(chunk["usage"].get("prompt_tokens", prompt_tokens))
                        completion = int(chunk["usage"].get("completion_tokens", completion))
                    for choice in chunk.get("choices", ()):
                        text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
                        if choice.get("finish_reason"):
                            finish = _FINISH.get(choice["finish_reason"], "stop")
                        if text:
                            completion += 1  # corrected by the usage chunk when the server sends one
                            if not first_at:
                                first_at = time.monotonic()
                            yield EngineOutput([text], prompt_tokens, completion)
        except httpx.TimeoutException:
            raise errors.DeadlineExceeded("The upstream server did not answer before the deadline.") from None
        except httpx.TransportError as exc:
            raise errors.Unavailable(
                f"Upstream server unreachable: {type(exc).__name__}.", retry_after_s=1.0
            ) from None
        now = time.monotonic()
        out = EngineOutput([], prompt_tokens, completion, finish or "stop")
        out.ttft_s = (first_at or now) - arrival
        out.e2e_s = now - arrival
        yield out
