"""Settings of the fault proxy (environment prefix AFTERSHOCK_FAULTPROXY_); flags override them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class FaultProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_FAULTPROXY_", frozen=True, extra="ignore")

    # The HTTP API; Toxiproxy's port. Port 0 picks a free one (tests).
    host: str = "127.0.0.1"
    port: int = Field(8474, ge=0, le=65535)
    # Prometheus /metrics on its own port; None or 0 switches it off.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    # Proxies to create at start: a JSON list as for POST /populate (Toxiproxy's -config file).
    config: Path | None = None
    # A real Toxiproxy's API (http://host:8474): proxy nothing, serve only /metrics with its toxic
    # state (Toxiproxy's own metrics carry none); needs metrics_port.
    export_api: str | None = None

    # How long stopping waits for API requests still in flight.
    shutdown_grace_s: float = Field(2.0, ge=0)
    log_level: str = "INFO"
