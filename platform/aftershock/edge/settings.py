"""Settings of the edge service (environment prefix AFTERSHOCK_EDGE_)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class EdgeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_EDGE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    # /metrics lives on its own port, never on the public one; 0 switches it off.
    metrics_port: int = Field(9100, ge=0, le=65535)
    backend_target: str = "127.0.0.1:50061"

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

    shutdown_grace_s: float = Field(30.0, ge=0)
    log_level: str = "INFO"
    log_content: bool = False
