"""API keys and per-key rate limits at the edge of a real stack (real redis-server)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import openai
import pytest
import yaml
from aftershock.stack import Stack

from tests.servers import RedisServer
from tests.stack_support import running_stack

pytestmark = pytest.mark.e2e

FULL_KEY = "sk-aftershock-test-full-0123456789"
NARROW_KEY = "sk-aftershock-test-narrow-0123456789"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("keys") / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            [
                {"name": "full", "key_sha256": hashlib.sha256(FULL_KEY.encode()).hexdigest(), "rpm": 1000},
                {
                    "name": "narrow",
                    "key_sha256": hashlib.sha256(NARROW_KEY.encode()).hexdigest(),
                    "models": ["sim-fast"],
                    "rpm": 3,
                },
            ]
        )
    )
    edge = {"AFTERSHOCK_EDGE_API_KEYS_FILE": str(keys), "AFTERSHOCK_EDGE_REDIS_URL": redis_server.url}
    with running_stack("test_security", replicas=1, env={"edge": edge}) as stack:
        yield stack


BODY = {"model": "sim-fast", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_missing_and_unknown_keys_are_401(secured: Stack) -> None:
    url = f"{secured.edge_url}/v1/chat/completions"
    missing = httpx.post(url, json=BODY, timeout=10)
    assert missing.status_code == 401
    assert missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.post(url, json=BODY, headers={"authorization": "Bearer sk-nope"}, timeout=10)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{secured.edge_url}/v1/models", timeout=10).status_code == 401
    # Probes stay open for the orchestrator.
    assert httpx.get(f"{secured.edge_url}/healthz", timeout=10).status_code == 200
    assert httpx.get(f"{secured.edge_url}/readyz", timeout=10).status_code == 200


def test_openai_sdk_with_a_valid_key(secured: Stack) -> None:
    client = openai.OpenAI(base_url=f"{secured.edge_url}/v1", api_key=FULL_KEY, max_retries=0)
    resp = client.chat.completions.create(model="sim-slow", messages=BODY["messages"], max_tokens=3)  # type: ignore[arg-type]
    assert resp.usage is not None and resp.usage.completion_tokens == 3
    assert {m.id for m in client.models.list()} == {"sim-fast", "sim-slow"}


def test_model_outside_the_keys_allow_list_is_403(secured: Stack) -> None:
    client = openai.OpenAI(base_url=f"{secured.edge_url}/v1", api_key=NARROW_KEY, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(model="sim-slow", messages=BODY["messages"], max_tokens=2)  # type: ignore[arg-type]
    assert info.value.code == "model_not_allowed"
    assert {m.id for m in client.models.list()} == {"sim-fast"}


def test_rate_limit_is_429_with_headers_in_openai_shape(secured: Stack) -> None:
    url = f"{secured.edge_url}/v1/chat/completions"
    headers = {"authorization": f"Bearer {NARROW_KEY}"}
    statuses = []
    last = None
    for _ in range(6):
        last = httpx.post(url, json=BODY, headers=headers, timeout=10)
        statuses.append(last.status_code)
        if last.status_code == 200:
            assert last.headers["x-ratelimit-limit-requests"] == "3"
            assert "x-ratelimit-remaining-requests" in last.headers
    assert statuses.count(200) <= 3 and 429 in statuses, statuses
    assert last is not None and last.status_code == 429
    assert int(last.headers["retry-after"]) >= 1
    assert last.headers["x-ratelimit-remaining-requests"] == "0"
    error = last.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"


def test_metrics_are_not_on_the_public_port(secured: Stack) -> None:
    assert secured.edge is not None
    public = httpx.get(
        f"{secured.edge_url}/metrics", headers={"authorization": f"Bearer {FULL_KEY}"}, timeout=10
    )
    assert public.status_code == 404
    private = httpx.get(f"http://127.0.0.1:{secured.edge.metrics_port}/metrics", timeout=10)
    assert "aftershock_auth_failures_total" in private.text
