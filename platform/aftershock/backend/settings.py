"""Settings of the backend service (environment prefix AFTERSHOCK_BACKEND_)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aftershock.backend.registry import ModelRoute, RegistryConfig, ReplicaConfig

# Served when no registry file is given or it was never readable: one local sim replica.
DEFAULT_FALLBACK = RegistryConfig(
    replicas=(ReplicaConfig(name="inference-0", address="127.0.0.1:50051"),),
    models=(
        ModelRoute(name="sim-small", replicas=("inference-0",)),
        ModelRoute(name="sim-large", replicas=("inference-0",)),
    ),
)


class BackendSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_BACKEND_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(50061, ge=0, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535)

    registry_file: Path | None = None
    fallback_catalogue: RegistryConfig = DEFAULT_FALLBACK
    registry_reload_s: float = Field(5.0, gt=0)

    shutdown_grace_s: float = Field(30.0, ge=0)
    log_level: str = "INFO"
    log_content: bool = False
