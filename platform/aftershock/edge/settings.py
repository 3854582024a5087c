"""Settings of the edge service (environment prefix AFTERSHOCK_EDGE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aftershock.edge.api_keys import AuthConfig
from aftershock.edge.ratelimit import RateLimitConfig

HttpTracing = Literal["edge", "instrumentor"]


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_EDGE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # /metrics lives on its own port, never on the public one; 0 switches it off.
    metrics_port: int = Field(9100, ge=0, le=65535)
    backend_target: str = "127.0.0.1:50061"
    # Processes sharing the port (aftershock/workers.py); reuse_port is set for each of them.
    workers: int = Field(1, ge=1)
    reuse_port: bool = False
    # Connections to the backend, used in turn: a backend with N workers spreads *connections*
    # among them (SO_REUSEPORT), so one connection would keep every call on one worker.
    backend_channels: int = Field(1, ge=1)

    # Client timeout: the `x-request-timeout` header (seconds), else this default; capped at the max.
    default_timeout_s: float = Field(600.0, gt=0)
    max_timeout_s: float = Field(3600.0, gt=0)
    max_body_bytes: int = Field(1_048_576, gt=0)
    # How long /v1/models and the model-name label set are cached.
    models_cache_s: float = Field(2.0, ge=0)
    readiness_timeout_s: float = Field(1.0, gt=0)
    # Load shedding: completions beyond this many in flight get 429 + Retry-After at once.
    max_in_flight: int = Field(1024, gt=0)
    shed_retry_after_s: float = Field(1.0, gt=0)

    # API keys: `Authorization: Bearer <key>`. Unset means on exactly when keys are configured, so a
    # local stack runs open and a configured one fails closed. Keys are kept as SHA-256 only.
    auth_enabled: bool | None = None
    api_keys_file: Path | None = None
    api_keys: SecretStr | None = None

    # Per-key token-bucket rate limits in Redis (0 = unlimited); unset redis_url switches them off.
    redis_url: str | None = None
    default_rpm: int = Field(0, ge=0)
    default_tpm: int = Field(0, ge=0)
    ratelimit_window_s: float = Field(60.0, gt=0)
    ratelimit_default_max_tokens: int = Field(256, gt=0)
    ratelimit_redis_timeout_s: float = Field(0.25, gt=0)
    ratelimit_circuit_open_s: float = Field(5.0, gt=0)

    shutdown_grace_s: float = Field(30.0, ge=0)
    # How long an idle keep-alive connection stays open. Longer than clients keep idle connections
    # pooled (httpx and the openai SDK: 5 s) and than load balancers' idle timeouts (often 60 s),
    # so the client side always closes first: a server that closes first races a client reusing
    # the connection at that moment, and that request fails before it is sent.
    keep_alive_s: int = Field(75, gt=0)
    log_level: str = "INFO"
    log_content: bool = False
    # Who makes the HTTP SERVER span: the edge's own middleware (http_spans.py), or
    # opentelemetry-instrumentation-fastapi's, for its hooks, header capture and HTTP metrics.
    http_tracing: HttpTracing = "edge"

    def auth_config(self) -> AuthConfig:
        configured = self.api_keys_file is not None or self.api_keys is not None
        enabled = configured if self.auth_enabled is None else self.auth_enabled
        return AuthConfig(enabled=enabled, api_keys_file=self.api_keys_file, api_keys=self.api_keys)

    def ratelimit_config(self) -> RateLimitConfig:
        return RateLimitConfig(
            redis_url=self.redis_url,
            default_rpm=self.default_rpm,
            default_tpm=self.default_tpm,
            window_s=self.ratelimit_window_s,
            default_max_tokens_charge=self.ratelimit_default_max_tokens,
            socket_timeout_s=self.ratelimit_redis_timeout_s,
            socket_connect_timeout_s=self.ratelimit_redis_timeout_s,
            circuit_open_s=self.ratelimit_circuit_open_s,
        )
