"""Choosing an inference replica for a request.

Only healthy replicas whose breakers admit are candidates; a replica already tried for this request
is used again only when nothing else is left. Among candidates, placement decides (prefix or
session affinity bounded by load, else the least loaded). A model's fallback tier is used only when
its primary pool has no candidate, and its fallback models only when it has no candidate at all.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from aftershock import errors
from aftershock.backend.hashring import point
from aftershock.backend.placement import Candidate, Placement, PlacementConfig, Reason
from aftershock.backend.prefix import prefix_key
from aftershock.backend.registry import ModelRegistry, ModelRoute
from aftershock.backend.replicas import Replica, ReplicaPool, every_replica_waiting
from aftershock.v1 import generation_pb2 as pb

RouteReason = Reason | Literal["fallback_tier", "fallback_model"]
ROUTE_REASONS: tuple[RouteReason, ...] = (
    "prefix",
    "session",
    "spill",
    "least_loaded",
    "fallback_tier",
    "fallback_model",
)


@dataclass(frozen=True, slots=True)
class Route:
    replica: Replica
    # The model that serves: the one asked for, or a fallback in its chain.
    model: str
    reason: RouteReason


class Router:
    def __init__(
        self, registry: ModelRegistry, pool: ReplicaPool, placement: Placement | None = None
    ) -> None:
        self._registry = registry
        self._pool = pool
        self.placement = placement or Placement(PlacementConfig())

    def replicas_of(self, model: str) -> list[Replica]:
        names = self._registry.config.replicas_for(model)
        if names is None:
            raise errors.ModelNotFound(model)
        return [r for n in names if (r := self._pool.get(n)) is not None]

    def _candidates(self, names: Collection[str], exclude: Collection[str]) -> list[Replica]:
        # Healthy, not waiting out a Retry-After, and its breaker admits (one predicate: routable).
        now = self._pool.clock.now()
        admitted = [r for n in names if (r := self._pool.get(n)) is not None and r.routable(now)]
        return [r for r in admitted if r.name not in exclude] or admitted

    def model_route(self, model: str) -> ModelRoute | None:
        return self._registry.config.route(model)

    def affinity(self, request: pb.GenerateRequest) -> tuple[int | None, bool]:
        """The request's affinity key and whether it is a session's (else its prompt prefix's)."""
        if request.session_id:
            return point(request.session_id.encode()), True
        config = self.placement.config
        if config.policy != "prefix":
            return None, False
        return prefix_key(request, config.block_chars, config.key_blocks), False

    def has_fallback(self, model: str, skip_models: Collection[str]) -> bool:
        return any(m not in skip_models for m in self._registry.config.fallback_chain(model))

    def route(
        self,
        model: str,
        exclude: Collection[str] = (),
        key: int | None = None,
        session: bool = False,
        skip_models: Collection[str] = (),
    ) -> Route:
        config = self._registry.config
        if config.route(model) is None:
            raise errors.ModelNotFound(model)
        for depth, name in enumerate(config.fallback_chain(model)):
            if name in skip_models:
                continue
            route = config.route(name)
            assert route is not None  # the chain holds only routed models
            for tier, names in enumerate(route.tiers):
                candidates = self._candidates(names, exclude)
                if not candidates:
                    continue
                replica, reason = self._place(candidates, key, session)
                if depth > 0:
                    return Route(replica, name, "fallback_model")
                return Route(replica, name, "fallback_tier" if tier > 0 else reason)
        raise self._unavailable(model)

    def pick(self, model: str, exclude: Collection[str] = ()) -> Replica:
        return self.route(model, exclude).replica

    def _place(self, candidates: list[Replica], key: int | None, session: bool) -> tuple[Replica, Reason]:
        now = self._pool.clock.now()
        by_name = {r.name: r for r in candidates}
        name, reason = self.placement.choose(
            [Candidate(r.name, r.in_flight, r.load, r.slow_until > now) for r in candidates], key, session
        )
        return by_name[name], reason

    def _unavailable(self, model: str) -> errors.AftershockError:
        replicas = self.replicas_of(model)
        waiting = every_replica_waiting(model, replicas, self._pool.clock.now())
        if waiting is not None:
            return waiting
        if any(r.healthy for r in replicas):
            return errors.Unavailable(
                f"Every replica of model '{model}' has its circuit breaker open.",
                error_type="circuit_open",
                retry_after_s=1.0,
            )
        return errors.Unavailable(
            f"No healthy replica is serving model '{model}'.",
            error_type="no_healthy_replica",
            retry_after_s=1.0,
        )
