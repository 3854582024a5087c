"""A minimal OpenAI-compatible upstream for the peer benchmark: as little CPU per request as possible.

    python benchmarks/upstream.py --port 8100 [--model peer-model] [--tokens N]
        [--paced-model peer-model-paced --itl-ms 10]

Plain asyncio HTTP/1.1 with keep-alive, no framework: GET /v1/models, POST /v1/completions and
/v1/chat/completions, streamed (one chunked write per token, then a usage event when asked, then
[DONE]) or not. Every reply has max_tokens tokens (16 by default), so whatever sits in front of it
relays the same work; --tokens N caps replies at N, finishing with "stop" as a stop string would
(it shows a client counting what it got, not what it asked for). A second model, --paced-model,
streams one event every --itl-ms as a model server generating tokens does, so a relay cannot merge
them; the first model's events follow each other at once. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import orjson

TOKEN = " tok"


def _completion(chat: bool, model: str, n: int, prompt_tokens: int, finish: str) -> bytes:
    text = TOKEN * n
    choice: dict[str, object] = {"index": 0, "finish_reason": finish}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return orjson.dumps(
        {
            "id": "cmpl-peer",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": n,
                "total_tokens": prompt_tokens + n,
            },
        }
    )


def _events(chat: bool, model: str, n: int, prompt_tokens: int, usage: bool, finish: str) -> list[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    head = {"id": "cmpl-peer", "object": obj, "created": int(time.time()), "model": model}

    def choice(text: str, finish: str | None) -> dict[str, object]:
        c: dict[str, object] = {"index": 0, "finish_reason": finish}
        if chat:
            c["delta"] = {"content": text} if text else {}
        else:
            c["text"] = text
        return c

    events = [orjson.dumps({**head, "choices": [choice(TOKEN, None)]}) for _ in range(n)]
    events.append(orjson.dumps({**head, "choices": [choice("", finish)]}))
    if usage:
        totals = {"prompt_tokens": prompt_tokens, "completion_tokens": n, "total_tokens": prompt_tokens + n}
        events.append(orjson.dumps({**head, "choices": [], "usage": totals}))
    return [b"data: " + e + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]


def _response(status: str, body: bytes, content_type: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


class Upstream:
    def __init__(self, model: str, cap: int | None = None, paced: dict[str, float] | None = None) -> None:
        self.model = model
        self.cap = cap
        self.itl_s = {model: 0.0, **(paced or {})}  # pause between streamed events, per model
        listing = [{"id": m, "object": "model", "max_model_len": 8192} for m in self.itl_s]
        self.models = _response("200 OK", orjson.dumps({"object": "list", "data": listing}))

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                for line in lines[1:]:
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length) if length else b""
                if method == b"GET" and path.rstrip(b"/").endswith(b"/models"):
                    writer.write(self.models)
                elif method == b"POST" and path.endswith(b"completions"):
                    await self._complete(path.endswith(b"chat/completions"), body, writer)
                else:
                    writer.write(_response("404 Not Found", b'{"error":{"message":"not found"}}'))
                await writer.drain()
        finally:
            writer.close()

    async def _complete(self, chat: bool, raw: bytes, writer: asyncio.StreamWriter) -> None:
        req = orjson.loads(raw)
        asked = int(req.get("max_tokens") or req.get("max_completion_tokens") or 16)
        n = asked if self.cap is None else min(asked, self.cap)
        finish = "length" if n == asked else "stop"
        model = str(req.get("model") or self.model)
        itl_s = self.itl_s.get(model, 0.0)
        prompt = req.get("prompt") or " ".join(str(m.get("content", "")) for m in req.get("messages", ()))
        prompt_tokens = max(1, len(str(prompt).split()))
        if not req.get("stream"):
            writer.write(_response("200 OK", _completion(chat, model, n, prompt_tokens, finish)))
            return
        usage = bool((req.get("stream_options") or {}).get("include_usage"))
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        )
        for i, event in enumerate(_events(chat, model, n, prompt_tokens, usage, finish)):
            writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
            await writer.drain()
            # One write per event, as a token-by-token server would; paced: a token every itl_s.
            await asyncio.sleep(itl_s if 0 < i < n else 0)
        writer.write(b"0\r\n\r\n")


async def serve(port: int, model: str, cap: int | None, paced: dict[str, float] | None = None) -> None:
    upstream = Upstream(model, cap, paced)
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="peer-model")
    parser.add_argument("--tokens", type=int, default=None, help="cap every reply at this many tokens")
    parser.add_argument("--paced-model", default=None, help="a second model, streamed one event per --itl-ms")
    parser.add_argument("--itl-ms", type=float, default=10.0)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    paced = {args.paced_model: args.itl_ms / 1000} if args.paced_model else None
    asyncio.run(serve(args.port, args.model, args.tokens, paced))


if __name__ == "__main__":
    main()
