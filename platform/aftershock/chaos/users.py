"""Locust users for drills and benchmarks: OpenAI-style REST and SSE clients of the edge.

Importing this module imports Locust, which monkey-patches the standard library for gevent: only
import it in a process that runs Locust (the drill runner, `locust -f benchmarks/locustfile.py`),
never in a service.

Every request is also kept as a `Record` (client-side latency, time to first token, trace id,
backend attempts) so a drill can chart and judge what clients saw.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from locust import HttpUser, between, task

from aftershock.chaos.record import Record, Recorder, client_retryable
from aftershock.inference.engine import ChatTurn, render_chat
from aftershock.inference.sim_tokens import expected_text


@dataclass(frozen=True)
class LoadSettings:
    model: str = "sim-slow"
    max_tokens: int = 16
    seeded: bool = True
    idempotency_share: float = 0.0
    duplicates: int = 2
    client_retries: int = 0
    timeout_s: float = 20.0
    api_key: str | None = None


def _expected(body: dict[str, Any]) -> str | None:
    """The whole answer to a seeded request: the sim engine and the drills' model servers both
    generate it from (model, rendered prompt, seed)."""
    if "seed" not in body:
        return None
    turns = [ChatTurn(m["role"], m["content"]) for m in body["messages"]]
    return expected_text(body["model"], render_chat(turns), body["seed"], body["max_tokens"])


def _trace_id(headers: Any) -> str:
    parts = str(headers.get("traceparent", "")).split("-")
    return parts[1] if len(parts) == 4 else ""


class EdgeUser(HttpUser):
    abstract = True
    wait_time = between(0.05, 0.2)
    settings: ClassVar[LoadSettings] = LoadSettings()
    recorder: ClassVar[Recorder] = Recorder()
    stream: ClassVar[bool] = False
    _seq: ClassVar[itertools.count[int]] = itertools.count()
    _keys: ClassVar[list[int]] = []

    @classmethod
    def reset_keys(cls) -> None:
        """Forget the keys of an earlier run, so a drill's duplicates are its own."""
        cls._keys = []

    def _body(self) -> tuple[dict[str, Any], dict[str, str]]:
        s = self.settings
        n = next(self._seq)
        headers = {"content-type": "application/json"}
        if s.api_key:
            headers["authorization"] = f"Bearer {s.api_key}"
        keyed = bool(s.idempotency_share) and random.random() < s.idempotency_share
        if keyed:
            # Reuse a recent key so dedupe has duplicates to fold; a key always carries the same body.
            keys = type(self)._keys
            if keys and random.random() < 1 - 1 / s.duplicates:
                n = random.choice(keys[-16:])
            else:
                keys.append(n)
            headers["idempotency-key"] = f"drill-{n}"
        body: dict[str, Any] = {
            "model": s.model,
            "messages": [{"role": "user", "content": f"drill request {n}"}],
            "max_tokens": s.max_tokens,
            "stream": self.stream,
        }
        if keyed:
            body["temperature"] = 1.0  # unseeded: a second generation would show as different text
        elif s.seeded:
            body["seed"] = n
        return body, headers

    def _record(self, started: float, attempt: int, token: int, **fields: Any) -> Record:
        now = time.monotonic()
        record = Record(
            started=started - self.recorder.start,
            latency_s=now - started,
            stream=self.stream,
            client_attempt=attempt,
            **fields,
        )
        self.recorder.add(record, token)
        return record

    def _with_retries(self, send: Callable[[dict[str, Any], dict[str, str], int], Record]) -> None:
        """Sends one request; a keyed one cut or refused with a retryable status is sent again with
        the same key and body, as a careful client would, up to `client_retries` times."""
        body, headers = self._body()
        retries = self.settings.client_retries if "idempotency-key" in headers else 0
        for attempt in range(retries + 1):
            record = send(body, headers, attempt)
            if record.ok or not client_retryable(record):
                return


class CompletionUser(EdgeUser):
    """Non-streamed chat completions."""

    @task
    def complete(self) -> None:
        self._with_retries(self._complete)

    def _complete(self, body: dict[str, Any], headers: dict[str, str], attempt: int) -> Record:
        started = time.monotonic()
        token = self.recorder.open(started)
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=self.settings.timeout_s,
            catch_response=True,
            name="chat (json)",
        ) as resp:
            ok = resp.status_code == 200
            text = ""
            error = ""
            if ok:
                text = resp.json()["choices"][0]["message"]["content"] or ""
                resp.success()
            else:
                error = _error_code(resp.text) or f"http {resp.status_code}"
                resp.failure(error)
            return self._record(
                started,
                attempt,
                token,
                ttft_s=time.monotonic() - started if ok else None,
                ok=ok,
                status=resp.status_code,
                error=error,
                trace_id=_trace_id(resp.headers),
                attempts=int(resp.headers.get("x-aftershock-attempts", 1)),
                idempotency_key=headers.get("idempotency-key", ""),
                text=text,
                expected=_expected(body),
                retry_after=resp.headers.get("retry-after", ""),
            )


class StreamingUser(EdgeUser):
    """Streamed chat completions over SSE; time to first token is the first content event."""

    stream = True

    @task
    def stream_chat(self) -> None:
        self._with_retries(self._stream_chat)

    def _stream_chat(self, body: dict[str, Any], headers: dict[str, str], attempt: int) -> Record:
        started = time.monotonic()
        token = self.recorder.open(started)
        ttft: float | None = None
        parts: list[str] = []
        error = ""
        with self.client.post(
            "/v1/chat/completions",
            json=body,
            headers=headers,
            timeout=self.settings.timeout_s,
            stream=True,
            catch_response=True,
            name="chat (sse)",
        ) as resp:
            status = resp.status_code
            done = False
            try:
                if status != 200:
                    error = _error_code(resp.text) or f"http {status}"
                else:
                    for line in resp.iter_lines(decode_unicode=True):
                        if not line or not line.startswith("data: "):
                            continue
                        data = line[6:]
                        if data == "[DONE]":
                            done = True
                            break
                        event = json.loads(data)
                        if "error" in event:
                            error = str(event["error"].get("code") or "stream error")
                            break
                        for choice in event.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                if ttft is None:
                                    ttft = time.monotonic() - started
                                parts.append(piece)
                    if not done and not error:
                        error = "stream cut"
            except Exception as exc:  # a connection reset mid-stream is a client-visible failure
                error = type(exc).__name__
            ok = done and not error
            if ok:
                resp.success()
            else:
                resp.failure(error)
            return self._record(
                started,
                attempt,
                token,
                ttft_s=ttft,
                ok=ok,
                status=status,
                error=error,
                trace_id=_trace_id(resp.headers),
                attempts=int(resp.headers.get("x-aftershock-attempts", 1)),
                idempotency_key=headers.get("idempotency-key", ""),
                text="".join(parts),
                expected=_expected(body),
                retry_after=resp.headers.get("retry-after", ""),
            )


def _error_code(text: str) -> str:
    try:
        return str(json.loads(text)["error"].get("code") or "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""
