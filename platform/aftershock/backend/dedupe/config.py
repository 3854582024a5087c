"""Dedupe settings and the errors its callers see."""

from __future__ import annotations

from dataclasses import dataclass, field

from aftershock import errors
from aftershock.breaker import BreakerConfig
from aftershock.redis_guard import DEFAULT_PROBE_EVERY_S, DEFAULT_TIMEOUT_S, RedisGuardConfig


@dataclass(frozen=True)
class DedupeConfig:
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "aftershock:dedupe:"
    # The owner's lease; a duplicate takes over this long after the owner's last renewal.
    lease_ms: int = 10_000
    renew_every_ms: int = 3_000
    # How long a finished result is replayed to a client that retries.
    result_ttl_s: float = 300.0
    # A joiner waits this long in XREAD BLOCK before checking that the owner is still alive.
    join_poll_ms: int = 1_000
    # Short, so that an unreachable Redis costs a request little before the breaker opens.
    socket_timeout_s: float = DEFAULT_TIMEOUT_S
    socket_connect_timeout_s: float = DEFAULT_TIMEOUT_S
    # Redis's breaker: a short reset, so dedupe comes back soon after Redis does.
    breaker: BreakerConfig = field(default_factory=lambda: BreakerConfig(reset_timeout_s=5.0))
    # A background PING keeps redis_up current and closes the breaker without traffic; 0 disables.
    probe_every_s: float = DEFAULT_PROBE_EVERY_S
    # Unflushed messages after which publish() waits for Redis (backpressure, not per message).
    max_pending: int = 1024
    # After the first message, publishes are batched over this long: a paced stream then costs one
    # Redis call per interval, not per token. Joiners lag the owner by at most this much; the
    # owner's own stream never waits for it, and finish() flushes at once.
    publish_interval_ms: int = 50
    # Times serve() starts over after OwnerLost before it generates without dedupe.
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.lease_ms <= 0 or not 0 < self.renew_every_ms < self.lease_ms:
            raise ValueError("need 0 < renew_every_ms < lease_ms")
        if self.result_ttl_s <= 0 or self.join_poll_ms <= 0:
            raise ValueError("result_ttl_s and join_poll_ms must be positive")
        if self.socket_timeout_s <= 0 or self.socket_connect_timeout_s <= 0:
            raise ValueError("Redis timeouts must be positive")
        if self.max_pending < 1 or self.max_attempts < 1:
            raise ValueError("max_pending and max_attempts must be >= 1")

    def redis(self) -> RedisGuardConfig:
        return RedisGuardConfig(
            url=self.redis_url,
            socket_timeout_s=self.socket_timeout_s,
            socket_connect_timeout_s=self.socket_connect_timeout_s,
            breaker=self.breaker,
            probe_every_s=self.probe_every_s,
        )

    @property
    def result_ttl_ms(self) -> int:
        return max(1, round(self.result_ttl_s * 1000))

    @property
    def running_ttl_ms(self) -> int:
        # Metadata of a running generation outlives its lease, so a duplicate arriving after the
        # owner died is counted as a takeover; it still expires if nobody comes.
        return self.lease_ms + self.result_ttl_ms


class OwnerLost(errors.Unavailable):
    """The generation a Join followed ended without a result: call `begin` again.

    An Unavailable, so that if it escapes unhandled the client sees a retryable 503.
    """
