"""Choosing an inference replica for a request: healthy ones first, least in-flight wins."""

from __future__ import annotations

import itertools
from collections.abc import Collection

from aftershock import errors
from aftershock.backend.registry import ModelRegistry
from aftershock.backend.replicas import Replica, ReplicaPool, every_replica_waiting


class Router:
    def __init__(self, registry: ModelRegistry, pool: ReplicaPool) -> None:
        self._registry = registry
        self._pool = pool
        self._turn = itertools.count()

    def replicas_of(self, model: str) -> list[Replica]:
        names = self._registry.config.replicas_for(model)
        if names is None:
            raise errors.ModelNotFound(model)
        return [r for n in names if (r := self._pool.get(n)) is not None]

    def pick(self, model: str, exclude: Collection[str] = ()) -> Replica:
        """A healthy replica not yet tried; a tried one only when nothing else is left."""
        replicas = self.replicas_of(model)
        healthy = [r for r in replicas if r.healthy]
        now = self._pool.clock.now()
        admitted = [r for r in healthy if r.routable(now)]
        candidates = [r for r in admitted if r.name not in exclude] or admitted
        if not candidates:
            if (waiting := every_replica_waiting(model, replicas, now)) is not None:
                raise waiting
            if healthy:
                raise errors.Unavailable(
                    f"Every replica of model '{model}' has its circuit breaker open.",
                    error_type="circuit_open",
                    retry_after_s=1.0,
                )
            raise errors.Unavailable(
                f"No healthy replica is serving model '{model}'.",
                error_type="no_healthy_replica",
                retry_after_s=1.0,
            )
        low = min(r.in_flight for r in candidates)
        least = [r for r in candidates if r.in_flight == low]
        return least[next(self._turn) % len(least)]
