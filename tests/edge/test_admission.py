"""Admission: shed, authenticate, authorize and rate-limit, the same way for every route."""

from __future__ import annotations

import uuid

import httpx
import pytest
from aftershock import errors
from aftershock.edge import errors as http_errors
from aftershock.edge.admission import Admission
from aftershock.edge.api_keys import ApiKey, AuthConfig, parse_env_keys
from aftershock.edge.auth import Authenticator
from aftershock.edge.ratelimit import RateLimitConfig, RateLimiter, RateLimitExceeded
from aftershock.metrics import EdgeMetrics, new_registry

from tests.edge.live import ScriptedBackend, in_thread, scripted_edge

RAW_KEY = "sk-admission-test"
AUTH = {"authorization": f"Bearer {RAW_KEY}"}


def admission(limiter: RateLimiter | None = None, max_in_flight: int = 2) -> tuple[Admission, EdgeMetrics]:
    metrics = EdgeMetrics(new_registry())
    auth = Authenticator(AuthConfig(enabled=True, api_keys=RAW_KEY))
    return (
        Admission(
            auth,
            limiter or RateLimiter(RateLimitConfig()),
            metrics,
            max_in_flight=max_in_flight,
            shed_retry_after_s=2.0,
        ),
        metrics,
    )


def test_at_the_limit_requests_are_shed_before_authentication() -> None:
    adm, metrics = admission(max_in_flight=1)
    held = adm.enter(AUTH)
    assert adm.in_flight == 1 and metrics.in_flight._value.get() == 1
    with pytest.raises(errors.ResourceExhausted) as info:
        adm.enter({})  # no key at all: shedding answers first, and costs no key lookup
    http = http_errors.from_domain(info.value, "r")
    assert (http.status, http.body["error"]["code"], http.headers) == (
        429,
        "overloaded",
        {"retry-after": "2"},
    )
    assert metrics.shed_requests_total.labels("edge")._value.get() == 1
    held.release()
    held.release()  # only the first release counts
    assert adm.in_flight == 0 and metrics.in_flight._value.get() == 0
    adm.enter(AUTH).release()


def test_a_stranger_takes_no_slot() -> None:
    adm, _ = admission()
    for headers in ({}, {"authorization": "Bearer sk-wrong"}):
        with pytest.raises(errors.Unauthenticated):
            adm.enter(headers)
    assert adm.in_flight == 0


async def test_charge_authorizes_then_rate_limits(redis_url: str) -> None:
    config = RateLimitConfig(redis_url=redis_url, default_rpm=1, key_prefix=f"t:{uuid.uuid4().hex[:8]}:")
    limiter = RateLimiter(config)
    try:
        adm, _ = admission(limiter)
        first = adm.enter(AUTH)
        await first.charge(None, 0)  # no model involved (the model list): nothing to authorize
        assert first.rate_headers["x-ratelimit-remaining-requests"] == "0"
        second = adm.enter(AUTH)
        with pytest.raises(RateLimitExceeded):
            await second.charge("sim-x", 1)
        # The refusal's headers stay with the pass, for the 429 response.
        assert second.rate_headers["x-ratelimit-limit-requests"] == "1"
    finally:
        await limiter.close()


async def test_charge_refuses_a_model_the_key_may_not_use() -> None:
    adm, _ = admission()
    (key,) = parse_env_keys(RAW_KEY)
    restricted = adm.enter(AUTH)
    restricted.key = ApiKey(key.name, key.key_sha256, models=frozenset({"sim-a"}))
    await restricted.charge("sim-a", 1)
    with pytest.raises(errors.PermissionDenied):
        await restricted.charge("sim-b", 1)


def test_the_model_list_goes_through_admission(redis_url: str) -> None:
    """/v1/models: a key is required, and listing is charged against the key's requests limit."""
    settings = {"api_keys": RAW_KEY, "redis_url": redis_url, "default_rpm": 2}
    edge = scripted_edge(ScriptedBackend(lambda _: []), **settings)
    with in_thread(lambda: edge) as url, httpx.Client(base_url=url, timeout=10) as client:
        refused = client.get("/v1/models")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "missing_api_key"
        listed = client.get("/v1/models", headers=AUTH)
        assert listed.status_code == 200
        assert [m["id"] for m in listed.json()["data"]] == ["sim-x"]
        assert listed.headers["x-ratelimit-limit-requests"] == "2"
        assert client.get("/v1/models", headers=AUTH).status_code == 200
        limited = client.get("/v1/models", headers=AUTH)
        assert limited.status_code == 429, limited.text
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert limited.headers["retry-after"] and limited.headers["x-ratelimit-remaining-requests"] == "0"
