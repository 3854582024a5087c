"""The model registry: which inference replicas serve which model.

Read from a YAML/JSON file and re-read when it changes. When the file is unreadable or invalid, the
last good registry stays in force; when there never was one, the static fallback catalogue from the
settings is served, and `aftershock_registry_fallback` says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aftershock.metrics import BackendMetrics

log = logging.getLogger(__name__)


class ReplicaConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    address: str = Field(min_length=1, description="host:port of the inference service")


class HedgeRoute(BaseModel):
    """Hedged first tokens for one model (off unless enabled); see aftershock.backend.hedge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    # Fixed seconds before hedging; unset derives it from the model's recent first-token times.
    after_s: float | None = Field(default=None, gt=0)
    quantile: float = Field(default=0.95, gt=0, lt=1)
    # A replica that lost a hedge race is passed over by placement this long (0: never).
    slow_for_s: float = Field(default=2.0, ge=0)


class ModelRoute(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    # The primary pool.
    replicas: tuple[str, ...] = Field(min_length=1)
    # A second tier, used only when no primary replica can serve (all down or breakers open).
    fallback_replicas: tuple[str, ...] = ()
    # Other models to serve the request, in order, when this one has no replica that can serve
    # or the prompt exceeds its context.
    fallback_models: tuple[str, ...] = ()
    # Unset: the backend's default (AFTERSHOCK_BACKEND_HEDGE_*), off unless configured.
    hedge: HedgeRoute | None = None

    @property
    def tiers(self) -> tuple[tuple[str, ...], ...]:
        return (self.replicas, self.fallback_replicas) if self.fallback_replicas else (self.replicas,)


class RegistryConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: tuple[ReplicaConfig, ...] = ()
    models: tuple[ModelRoute, ...] = ()

    @model_validator(mode="after")
    def _replicas_exist(self) -> RegistryConfig:
        names = {r.name for r in self.replicas}
        if len(names) != len(self.replicas):
            raise ValueError("replica names must be unique")
        models = {m.name for m in self.models}
        for model in self.models:
            missing = (set(model.replicas) | set(model.fallback_replicas)) - names
            if missing:
                raise ValueError(f"model {model.name!r} names unknown replicas {sorted(missing)}")
            unknown = set(model.fallback_models) - models
            if unknown:
                raise ValueError(f"model {model.name!r} falls back to unknown models {sorted(unknown)}")
            if model.name in model.fallback_models:
                raise ValueError(f"model {model.name!r} falls back to itself")
        return self

    def route(self, model: str) -> ModelRoute | None:
        for route in self.models:
            if route.name == model:
                return route
        return None

    def replicas_for(self, model: str) -> tuple[str, ...] | None:
        route = self.route(model)
        return None if route is None else route.replicas + route.fallback_replicas

    def fallback_chain(self, model: str) -> tuple[str, ...]:
        """The model, then its fallbacks breadth-first, each once (a cycle is cut, never followed)."""
        chain: list[str] = []
        queue = [model]
        while queue:
            name = queue.pop(0)
            route = self.route(name)
            if name in chain or route is None:
                continue
            chain.append(name)
            queue.extend(route.fallback_models)
        return tuple(chain)


def load_registry_file(path: Path) -> RegistryConfig:
    raw = yaml.safe_load(path.read_text())
    if not raw:
        # An empty file is far likelier a half-written one than an intent to serve nothing.
        raise ValueError(f"{path} is empty")
    return RegistryConfig.model_validate(raw)


class ModelRegistry:
    def __init__(self, path: Path | None, fallback: RegistryConfig, metrics: BackendMetrics) -> None:
        self._path = path
        self._fallback = fallback
        self._metrics = metrics
        self._mtime: float | None = None
        self.config = fallback
        self.using_fallback = True
        self.reload()

    def reload(self) -> bool:
        """Re-read the file if it changed; True when the config in force changed."""
        if self._path is None:
            self._metrics.registry_fallback.set(1)
            return False
        try:
            mtime = os.stat(self._path).st_mtime
            if mtime == self._mtime and not self.using_fallback:
                return False
            config = load_registry_file(self._path)
        except (OSError, ValueError, yaml.YAMLError) as exc:  # ValidationError is a ValueError
            if self._mtime is None:
                log.error("registry unreadable, serving the fallback catalogue", extra={"error": str(exc)})
                self.using_fallback = True
                self._metrics.registry_fallback.set(1)
            else:
                log.error("registry unreadable, keeping the last good one", extra={"error": str(exc)})
            return False
        changed = config != self.config
        self.config = config
        self._mtime = mtime
        self.using_fallback = False
        self._metrics.registry_fallback.set(0)
        if changed:
            log.info("registry loaded", extra={"models": [m.name for m in config.models]})
        return changed

    def model_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.config.models)
