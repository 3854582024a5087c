"""An existing OpenAI-compatible server (vLLM serve, TGI, llama.cpp server) behind the Engine protocol.

A streamed request is streamed from the server (stream=true, usage included) so that time to first
token and cancellation work the same as with in-process engines; closing the iterator closes the
HTTP response, which these servers take as an abort. A non-streamed request is one plain call
whose answer is one JSON body: parsing a stream of events for it cost most of this engine's CPU.
The HTTP client is openai_http.py (aiohttp, and why).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import orjson

from aftershock import errors
from aftershock.inference.engine import EngineOutput, EngineRequest, FinishReason, ModelSpec
from aftershock.inference.openai_errors import (
    DEFAULT_RETRY_AFTER_S,
    error_for_status,
    retry_after_of,
    stream_error_status,
)
from aftershock.inference.openai_http import UpstreamHttp
from aftershock.inference.sse import SseData

__all__ = ["OpenAIEngine", "error_for_status", "retry_after_of", "stream_error_status"]

log = logging.getLogger(__name__)

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "eos": "stop",
    "error": "error",
    "repetition": "repetition",
}


class OpenAIEngine:
    kind = "openai"
    # An upstream server promises nothing about reproducing a seeded stream (configurable later).
    reproducible = False

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        default_max_model_len: int = 8192,
        default_max_output_tokens: int = 4096,
        timeout_s: float = 600.0,
        stream_idle_timeout_s: float = 8.0,
        reproducible: bool = False,
    ) -> None:
        # Only the operator knows whether the upstream server is batch invariant (vLLM with
        # VLLM_BATCH_INVARIANT=1): off unless configured.
        self.reproducible = reproducible
        self._http = UpstreamHttp(base_url, api_key)
        self._timeout_s = timeout_s
        self._idle_s = stream_idle_timeout_s
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
            stream_idle_timeout_s=settings.openai_stream_idle_timeout_s,
            reproducible=settings.openai_reproducible,
        )

    async def start(self) -> None:
        """Learn the served models (vLLM reports max_model_len; others get the configured default)."""
        self._http.open()
        listing = await self._http.get_json("models", self._timeout_s)
        for item in listing.get("data", []):
            max_len = int(item.get("max_model_len") or self._default_len)
            self._models[item["id"]] = ModelSpec(
                item["id"], max_len, min(max_len, self._default_out), self.kind
            )
        log.info("openai engine ready", extra={"models": sorted(self._models)})

    async def stop(self) -> None:
        await self._http.close()

    def models(self) -> Sequence[ModelSpec]:
        return list(self._models.values())

    def _body(self, request: EngineRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": request.model, "stream": request.stream}
        if request.stream:
            body["stream_options"] = {"include_usage": True}
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
        if not request.stream:
            return self._whole(path, body, request)
        return self._stream(path, body, request)

    def _headers(self, request: EngineRequest, arrival: float) -> tuple[dict[str, str], float | None]:
        timeout = None if request.deadline is None else max(0.001, request.deadline - arrival)
        headers = {"x-request-id": request.request_id}
        if timeout is not None:
            headers["x-request-timeout"] = f"{timeout:.3f}"
        return headers, timeout

    async def _whole(
        self, path: str, body: dict[str, Any], request: EngineRequest
    ) -> AsyncIterator[EngineOutput]:
        """One non-streamed call: the whole answer as one output, bounded by the request's deadline."""
        arrival = time.monotonic()
        headers, timeout = self._headers(request, arrival)
        try:
            async with self._http.post(path, body, headers, total=timeout) as resp:
                status, content, resp_headers = resp.status, await resp.read(), resp.headers
        except TimeoutError:  # aiohttp's own timeouts are TimeoutErrors too
            raise errors.DeadlineExceeded("The upstream server did not answer before the deadline.") from None
        except aiohttp.ClientError as exc:
            raise errors.Unavailable(
                f"Upstream server unreachable: {type(exc).__name__}.", retry_after_s=DEFAULT_RETRY_AFTER_S
            ) from None
        if status != 200:
            raise error_for_status(status, content, resp_headers)
        try:
            answer = orjson.loads(content)
            if "error" in answer:
                raise error_for_status(stream_error_status(answer["error"]), content)
            choice = answer["choices"][0]
            chat = path.startswith("chat")
            text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
            usage = answer.get("usage") or {}
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
            # The server is broken, not the request: another replica may answer.
            raise errors.Unavailable(
                "The upstream server sent a malformed answer.", retry_after_s=DEFAULT_RETRY_AFTER_S
            ) from None
        text = text or ""
        # Without a usage block, a rough count: whitespace-separated words.
        completion = int(usage.get("completion_tokens") or len(text.split()))
        finish = _FINISH.get(choice.get("finish_reason") or "stop", "stop")
        out = EngineOutput([text] if text else [], int(usage.get("prompt_tokens") or 0), completion, finish)
        out.e2e_s = out.ttft_s = time.monotonic() - arrival  # the first token arrives with the last
        yield out

    async def _stream(
        self, path: str, body: dict[str, Any], request: EngineRequest
    ) -> AsyncIterator[EngineOutput]:
        arrival = time.monotonic()
        headers, timeout = self._headers(request, arrival)
        chat = path.startswith("chat")
        completion = 0
        prompt_tokens = 0
        first_at = 0.0
        finish: FinishReason | None = None
        done = False
        # Every event already read is one output (one message downstream): under load the upstream
        # runs ahead of us and a read holds several, and a message costs ~130 µs per hop to relay.
        pending: list[str] = []
        try:
            # Each socket read bounded by the time left at the start; _read() keeps the exact
            # deadline and the idle bound once the answer has started.
            async with self._http.post(path, body, headers, read=timeout) as resp:
                if resp.status != 200:
                    raise error_for_status(resp.status, await resp.read(), resp.headers)
                events = SseData(resp.content.iter_any())
                while True:
                    data = events.pop()
                    if data is None:
                        if pending:
                            yield EngineOutput(pending, prompt_tokens, completion)
                            pending = []
                        if not await self._read(events, request.deadline, bool(first_at)):
                            break
                        continue
                    if data == b"[DONE]":
                        done = True
                        break
                    try:
                        chunk = orjson.loads(data)
                    except orjson.JSONDecodeError:
                        chunk = None
                    if chunk is None or "error" in chunk:
                        if pending:  # what came before the bad event is delivered, as it would be alone
                            yield EngineOutput(pending, prompt_tokens, completion)
                            pending = []
                        if chunk is None:
                            # The server is broken, not the request: another replica may answer (or resume).
                            raise errors.Unavailable(
                                "The upstream server sent a malformed event.",
                                retry_after_s=DEFAULT_RETRY_AFTER_S,
                            )
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
                            pending.append(text)
        except TimeoutError:
            raise errors.DeadlineExceeded("The upstream server did not answer before the deadline.") from None
        except aiohttp.ClientError as exc:
            what = "cut the stream mid-answer" if first_at else "unreachable"
            raise errors.Unavailable(
                f"Upstream server {what}: {type(exc).__name__}.", retry_after_s=DEFAULT_RETRY_AFTER_S
            ) from None
        if not done and finish is None:
            # The body ended without [DONE] or a finish reason: a cut, never a complete answer.
            raise errors.Unavailable(
                "The upstream server ended the stream before the answer was complete.",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            )
        now = time.monotonic()
        out = EngineOutput(pending, prompt_tokens, completion, finish or "stop")
        out.ttft_s = (first_at or now) - arrival
        out.e2e_s = now - arrival
        yield out

    async def _read(self, events: SseData, deadline: float | None, started: bool) -> bool:
        """Reads more of the body (False at its end); bounded by the request's deadline, and once the
        answer has started, by the idle timeout (a server that stalls mid-answer)."""
        limit = self._idle_s if started else None
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and (limit is None or left < limit):
            limit = max(0.0, left)
        try:
            async with asyncio.timeout(limit):
                return await events.fill()
        except TimeoutError:
            if left is not None and limit == max(0.0, left):
                raise errors.DeadlineExceeded(
                    "The upstream server did not answer before the deadline."
                ) from None
            raise errors.Unavailable(
                f"The upstream server stalled mid-answer: no event for {self._idle_s:g} s.",
                retry_after_s=DEFAULT_RETRY_AFTER_S,
            ) from None
