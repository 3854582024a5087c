"""Settings of the backend service (environment prefix AFTERSHOCK_BACKEND_).

Each default is defined once, on the config dataclass the setting fills; the fields below refer to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from aftershock.backend.dedupe import DedupeConfig
from aftershock.backend.placement import PlacementConfig
from aftershock.backend.registry import HedgeRoute, ModelRoute, RegistryConfig, ReplicaConfig
from aftershock.backend.replicas import REPLICA_EJECTION_MAX_S
from aftershock.backend.retry import RetryConfig
from aftershock.breaker import BreakerConfig
from aftershock.redis_guard import DEFAULT_TIMEOUT_S

# Served when no registry file is given or it was never readable: one local sim replica.
DEFAULT_FALLBACK = RegistryConfig(
    replicas=(ReplicaConfig(name="inference-0", address="127.0.0.1:50051"),),
    models=(
        ModelRoute(name="sim-small", replicas=("inference-0",)),
        ModelRoute(name="sim-large", replicas=("inference-0",)),
    ),
)


class BackendSettings(BaseSettings):
    """Everything the backend reads at start; flags override the environment."""

    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_BACKEND_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(50061, ge=0, le=65535)
    metrics_port: int = Field(9101, ge=0, le=65535)
    # Processes sharing the port (aftershock/workers.py; gRPC binds with SO_REUSEPORT on Linux).
    workers: int = Field(1, ge=1)

    registry_file: Path | None = None
    fallback_catalogue: RegistryConfig = DEFAULT_FALLBACK
    registry_reload_s: float = Field(5.0, gt=0)

    # Routing: "prefix" sends requests that share a prompt prefix (or an x-session-id) to the same
    # replica unless it carries more than load_factor x the mean load; "least_loaded" ignores prefixes.
    routing_policy: Literal["prefix", "least_loaded"] = PlacementConfig.policy
    routing_block_chars: int = Field(PlacementConfig.block_chars, gt=0)
    routing_key_blocks: int = Field(PlacementConfig.key_blocks, gt=0)
    routing_load_factor: float = Field(PlacementConfig.load_factor, ge=1.0)
    # Hedged first tokens for models whose registry entry has no `hedge:` of its own: off unless
    # enabled; a fixed threshold, or (unset) the model's recent first-token quantile.
    hedge_enabled: bool = HedgeRoute().enabled
    hedge_after_s: float | None = Field(None, gt=0)
    hedge_quantile: float = Field(HedgeRoute().quantile, gt=0, lt=1)
    # How often each replica's engine load (running, waiting, KV cache) is polled.
    load_poll_s: float = Field(0.25, gt=0)

    # Load shedding: requests beyond this many in flight get RESOURCE_EXHAUSTED at once.
    max_in_flight: int = Field(1024, gt=0)

    # Circuit breaker per inference replica.
    breaker_fail_max: int = Field(BreakerConfig.fail_max, gt=0)
    breaker_reset_timeout_s: float = Field(BreakerConfig.reset_timeout_s, gt=0)
    breaker_half_open_max_calls: int = Field(BreakerConfig.half_open_max_calls, gt=0)
    # Each ejection in a row (a failed trial) keeps the replica out one reset timeout longer, up to this.
    breaker_reset_timeout_max_s: float = Field(REPLICA_EJECTION_MAX_S, gt=0)
    # Share breaker openings with the other backend replicas through redis_url.
    breaker_shared_state: bool = False

    # Retries: attempts per request (first try included), backoff with full jitter, a time limit for
    # a try's first message, and a budget (a fraction of recent requests plus a floor per second).
    retry_max_attempts: int = Field(RetryConfig.max_attempts, ge=1)
    retry_backoff_base_s: float = Field(RetryConfig.backoff_base_s, ge=0)
    retry_backoff_cap_s: float = Field(RetryConfig.backoff_cap_s, ge=0)
    retry_per_try_timeout_s: float = Field(RetryConfig.per_try_timeout_s, gt=0)
    retry_stream_idle_timeout_s: float = Field(RetryConfig.stream_idle_timeout_s, gt=0)
    retry_budget_ratio: float = Field(RetryConfig.budget_ratio, ge=0)
    retry_budget_min_per_s: float = Field(RetryConfig.budget_min_per_s, ge=0)
    retry_budget_window_s: float = Field(RetryConfig.budget_window_s, gt=0)

    # Redis for dedupe; unset switches dedupe off (Idempotency-Key is then ignored).
    redis_url: str | None = None
    # Also dedupe deterministic (seeded or greedy) requests without a key, by content hash.
    dedupe_content_hash: bool = False
    dedupe_lease_ms: int = Field(DedupeConfig.lease_ms, gt=0)
    dedupe_renew_every_ms: int = Field(DedupeConfig.renew_every_ms, gt=0)
    dedupe_result_ttl_s: float = Field(DedupeConfig.result_ttl_s, gt=0)
    dedupe_redis_timeout_s: float = Field(DEFAULT_TIMEOUT_S, gt=0)

    shutdown_grace_s: float = Field(30.0, ge=0)
    log_level: str = "INFO"
    log_content: bool = False

    def retry_config(self) -> RetryConfig:
        return RetryConfig(
            max_attempts=self.retry_max_attempts,
            backoff_base_s=self.retry_backoff_base_s,
            backoff_cap_s=self.retry_backoff_cap_s,
            per_try_timeout_s=self.retry_per_try_timeout_s,
            stream_idle_timeout_s=self.retry_stream_idle_timeout_s,
            budget_ratio=self.retry_budget_ratio,
            budget_min_per_s=self.retry_budget_min_per_s,
            budget_window_s=self.retry_budget_window_s,
        )

    def hedge_default(self) -> HedgeRoute:
        return HedgeRoute(
            enabled=self.hedge_enabled, after_s=self.hedge_after_s, quantile=self.hedge_quantile
        )

    def placement_config(self) -> PlacementConfig:
        return PlacementConfig(
            policy=self.routing_policy,
            block_chars=self.routing_block_chars,
            key_blocks=self.routing_key_blocks,
            load_factor=self.routing_load_factor,
        )

    def breaker_config(self) -> BreakerConfig:
        return BreakerConfig(
            fail_max=self.breaker_fail_max,
            reset_timeout_s=self.breaker_reset_timeout_s,
            half_open_max_calls=self.breaker_half_open_max_calls,
            # Never below the reset timeout: a larger base alone still means a fixed ejection time.
            reset_timeout_max_s=max(self.breaker_reset_timeout_max_s, self.breaker_reset_timeout_s),
        )

    def dedupe_config(self) -> DedupeConfig | None:
        if not self.redis_url:
            return None
        return DedupeConfig(
            redis_url=self.redis_url,
            lease_ms=self.dedupe_lease_ms,
            renew_every_ms=self.dedupe_renew_every_ms,
            result_ttl_s=self.dedupe_result_ttl_s,
            socket_timeout_s=self.dedupe_redis_timeout_s,
            socket_connect_timeout_s=self.dedupe_redis_timeout_s,
        )
