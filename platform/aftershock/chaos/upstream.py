"""A misbehaving OpenAI-compatible model server: faults at the model server itself, for drills and tests.

It serves /v1/models, /v1/completions and /v1/chat/completions (streamed and not) with text that is a
deterministic function of (model, prompt, seed), the same as the sim engine's, so a seeded stream
resumed on another instance lines up character for character. A control endpoint chooses the fault
the next requests meet:

    PUT    /control/fault   {"kind": "cut", "after_tokens": 3, "count": 1}
    DELETE /control/fault
    GET    /control/stats   {"requests": ..., "faulted": ..., "fault": {...}}

Faults: `status` (answer `status`, with Retry-After when `retry_after_s` is set), `stall_before`
(wait `stall_s` before answering), `stall_after` (stream `after_tokens` tokens, then wait `stall_s`,
then carry on), `cut` (stream `after_tokens` tokens, then end the body without a finish reason or
[DONE]; `abrupt` drops the connection instead), `malformed` (stream `after_tokens` tokens, then an
event that is not JSON). A non-streamed request meets only `status` and `stall_before`.

Run it as a process: `python -m aftershock.chaos.upstream --port 8080 --models sim-chat`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import uvicorn
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aftershock.inference.engine import ChatTurn, render_chat
from aftershock.inference.sim_tokens import TokenStream, count_prompt_tokens

FaultKind = Literal["none", "status", "stall_before", "stall_after", "cut", "malformed"]


class Fault(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: FaultKind = "none"
    status: int = Field(503, ge=400, le=599)
    retry_after_s: int | None = Field(None, ge=0)
    after_tokens: int = Field(3, ge=0)
    stall_s: float = Field(30.0, ge=0)
    abrupt: bool = False
    # How many requests meet the fault; None: every request until it is cleared.
    count: int | None = Field(None, ge=1)


class UpstreamSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_UPSTREAM_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    models: tuple[str, ...] = ("sim-chat",)
    max_model_len: int = Field(8192, gt=0)
    # Time between streamed tokens, so a stream is still mid-way when a fault strikes.
    itl_s: float = Field(0.01, ge=0)
    default_max_tokens: int = Field(16, gt=0)


class SeveredStream(Exception):
    """Raised inside a streaming body: the server drops the connection mid-response."""


@dataclass
class FaultState:
    fault: Fault = field(default_factory=Fault)
    left: int | None = None
    requests: int = 0
    faulted: int = 0

    def take(self) -> Fault:
        """The fault this request meets (counted down when the fault has a count)."""
        self.requests += 1
        if self.fault.kind == "none":
            return self.fault
        if self.left is not None:
            if self.left <= 0:
                return Fault()
            self.left -= 1
        self.faulted += 1
        return self.fault


def _error(status: int, message: str, retry_after_s: int | None = None) -> Response:
    headers = {} if retry_after_s is None else {"retry-after": str(retry_after_s)}
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    body = {"error": {"message": message, "type": kind, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def _sse(obj: object) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class Upstream:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.state = FaultState()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/control/fault", self.set_fault, methods=["PUT", "DELETE"]),
                Route("/control/stats", self.stats, methods=["GET"]),
            ]
        )

    async def models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "owned_by": "upstream", "max_model_len": self.settings.max_model_len}
            for m in self.settings.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def set_fault(self, request: Request) -> Response:
        fault = Fault() if request.method == "DELETE" else Fault.model_validate(await request.json())
        self.state.fault = fault
        self.state.left = fault.count
        return JSONResponse(fault.model_dump())

    async def stats(self, request: Request) -> Response:
        s = self.state
        return JSONResponse({"requests": s.requests, "faulted": s.faulted, "fault": s.fault.model_dump()})

    async def completions(self, request: Request) -> Response:
        return await self._serve(await request.json(), chat=False)

    async def chat(self, request: Request) -> Response:
        return await self._serve(await request.json(), chat=True)

    async def _serve(self, body: dict[str, Any], *, chat: bool) -> Response:
        model = str(body.get("model", ""))
        if model not in self.settings.models:
            return _error(404, f"The model '{model}' does not exist.")
        if chat:
            turns = [ChatTurn(str(m["role"]), str(m["content"])) for m in body.get("messages", ())]
            prompt = render_chat(turns)
        else:
            prompt = str(body.get("prompt", ""))
        seed = body.get("seed")
        stream = TokenStream(model, prompt, int(seed) if seed is not None else random.getrandbits(32))
        n = int(body.get("max_tokens") or self.settings.default_max_tokens)
        fault = self.state.take()
        if fault.kind == "stall_before":
            await asyncio.sleep(fault.stall_s)
        if fault.kind == "status":
            return _error(fault.status, f"Injected upstream fault: HTTP {fault.status}.", fault.retry_after_s)
        answer = _Answer(model, chat, count_prompt_tokens(prompt))
        if not body.get("stream"):
            return JSONResponse(answer.whole("".join(stream.next() for _ in range(n))))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._events(answer, stream, n, fault, usage), media_type="text/event-stream"
        )

    async def _events(
        self, answer: _Answer, stream: TokenStream, n: int, fault: Fault, usage: bool
    ) -> AsyncIterator[bytes]:
        for i in range(n):
            if i == fault.after_tokens:
                if fault.kind == "cut":
                    if fault.abrupt:
                        raise SeveredStream()
                    return  # the body ends cleanly, but the answer did not
                if fault.kind == "malformed":
                    yield b'data: {"choices": [{"index": 0, "text": \n\n'
                    return
                if fault.kind == "stall_after":
                    await asyncio.sleep(fault.stall_s)
            if i and self.settings.itl_s:
                await asyncio.sleep(self.settings.itl_s)
            yield _sse(answer.chunk(stream.next(), "length" if i == n - 1 else None))
        if usage:
            yield _sse(answer.usage(n))
        yield b"data: [DONE]\n\n"


class _Answer:
    """OpenAI's response shapes for one completion."""

    def __init__(self, model: str, chat: bool, prompt_tokens: int) -> None:
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.model = model
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"

    def _base(self, suffix: str = "") -> dict[str, Any]:
        return {"id": self.id, "object": self.object + suffix, "created": self.created, "model": self.model}

    def chunk(self, text: str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
            return {**self._base(".chunk"), "choices": [choice]}
        return {**self._base(), "choices": [{"index": 0, "text": text, "finish_reason": finish}]}

    def usage(self, completion: int) -> dict[str, Any]:
        suffix = ".chunk" if self.chat else ""
        return {**self._base(suffix), "choices": [], "usage": self._usage(completion)}

    def _usage(self, completion: int) -> dict[str, int]:
        total = self.prompt_tokens + completion
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion, "total_tokens": total}

    def whole(self, text: str) -> dict[str, Any]:
        if self.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "length",
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": "length"}
        return {**self._base(), "choices": [choice], "usage": self._usage(len(text.split()))}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m aftershock.chaos.upstream", description=__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--itl-s", type=float)
    args = parser.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None}
    settings = UpstreamSettings(**flags)
    server = Upstream(settings)
    uvicorn.run(
        server.app(),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,  # a stalled stream must not hold up a stop
    )


if __name__ == "__main__":
    main()
