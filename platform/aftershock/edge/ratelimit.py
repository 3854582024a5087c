"""Per-key rate limits: two token buckets in Redis, requests and tokens per minute, as OpenAI has.

One EVALSHA per request checks and charges both buckets atomically: the script reads Redis `TIME`
(one clock for every edge replica), refills each bucket by the time elapsed since its last charge,
and takes the charge from both only if both can pay, so a refused request costs nothing.

Bucket capacity is the limit and it refills at limit per `window_s` (60 s), so a key may burst up to
its limit and then sustains limit/minute. The tokens bucket is charged the request's `max_tokens`
(`max_completion_tokens` for chat), or `default_max_tokens_charge` when the request sets none:
the edge knows no output length before generating, and charging the upper bound up front, as
OpenAI does, means a key can never exceed its limit (the price: short answers are over-charged, and
nothing is refunded). Prompt tokens are not charged because the edge does not tokenize.

Layout: `{prefix}{<key name>}:requests` and `:tokens`, hashes {t: tokens left, ts: µs of the last
charge}, expiring once the bucket would be full again (a missing bucket is a full one). The hash
tag keeps a key's two buckets in one cluster slot.

Redis unreachable or failing: the request is allowed without headers (fail open: an outage of the
limiter must not become an outage of the edge), and Redis is skipped for `circuit_open_s`, after
which one request probes it, so a dead Redis costs the hot path nothing but a clock read. A
background PING every `probe_every_s` also closes the circuit, and keeps `aftershock_redis_up`
current on an idle edge. The client, circuit and probe are aftershock.redis_guard's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Gauge

from aftershock import errors
from aftershock.breaker import BreakerConfig
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.edge.auth import ApiKey
from aftershock.edge.ratelimit_script import TAKE
from aftershock.redis_guard import (
    DEFAULT_PROBE_EVERY_S,
    DEFAULT_TIMEOUT_S,
    GuardedRedis,
    RedisDown,
    RedisGuardConfig,
)

log = logging.getLogger(__name__)

REDIS_CLIENT = "ratelimit"  # the `client` label of aftershock_redis_up
BUCKETS = ("requests", "tokens")


@dataclass(frozen=True)
class RateLimitConfig:
    """Filled from EdgeSettings (redis_url, default_rpm, default_tpm, ...).

    A key's own rpm/tpm (key file) wins over the defaults; 0 or None means unlimited. With no
    redis_url nothing is limited.
    """

    redis_url: str | None = None
    default_rpm: int | None = None
    default_tpm: int | None = None
    # The refill period: the limits are "per window_s"; 60 makes them per minute (tests shrink it).
    window_s: float = 60.0
    # The tokens charged for a request without max_tokens (the simulator's default output length).
    default_max_tokens_charge: int = 256
    key_prefix: str = "aftershock:ratelimit:"
    # Short, so a slow or unreachable Redis costs a request little before the circuit opens.
    socket_timeout_s: float = DEFAULT_TIMEOUT_S
    socket_connect_timeout_s: float = DEFAULT_TIMEOUT_S
    # After a Redis failure, requests skip Redis (allowed, no headers) for this long.
    circuit_open_s: float = 5.0
    # A background PING (after start()) keeps redis_up current and closes the circuit without
    # traffic, so an idle edge does not keep reporting a Redis that has recovered; 0 disables.
    probe_every_s: float = DEFAULT_PROBE_EVERY_S

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.circuit_open_s <= 0:
            raise ValueError("window_s and circuit_open_s must be positive")
        if (self.default_rpm or 0) < 0 or (self.default_tpm or 0) < 0 or self.default_max_tokens_charge < 1:
            raise ValueError("limits must not be negative and default_max_tokens_charge must be >= 1")

    def redis(self, url: str) -> RedisGuardConfig:
        """The guarded Redis: the first failure opens the circuit; after circuit_open_s one request
        probes (the others keep skipping Redis)."""
        return RedisGuardConfig(
            url=url,
            socket_timeout_s=self.socket_timeout_s,
            socket_connect_timeout_s=self.socket_connect_timeout_s,
            breaker=BreakerConfig(fail_max=1, reset_timeout_s=self.circuit_open_s, half_open_max_calls=1),
            probe_every_s=self.probe_every_s,
        )


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    """An allowed request. `headers` (x-ratelimit-*) go on the response; empty when unchecked."""

    headers: Mapping[str, str] = field(default_factory=dict)
    # False when the key is unlimited or Redis was skipped (failed open).
    checked: bool = False


UNCHECKED = RateLimitDecision()


class RateLimitExceeded(errors.ResourceExhausted):
    """429 + Retry-After; `headers` (x-ratelimit-*, retry-after-ms) belong on the error response too."""

    def __init__(self, message: str, *, retry_after_s: float, headers: Mapping[str, str]) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.headers = headers


class TokensExceedLimit(errors.InvalidArgument):
    """max_tokens above the key's whole tokens-per-window limit: waiting would never help (400, not 429,
    so that SDKs do not retry it)."""

    error_type = "tokens_exceed_rate_limit"


class RateLimiter:
    def __init__(
        self,
        config: RateLimitConfig,
        *,
        redis_up: Gauge | None = None,
        fail_open_total: Counter | None = None,
        rejected_total: Counter | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        """`redis_up`: the aftershock_redis_up child for REDIS_CLIENT; `fail_open_total` has the label
        ["reason"] (redis_error, circuit_open); `rejected_total` the label ["bucket"] (requests, tokens)."""
        self.config = config
        self._window_ms = max(1, round(config.window_s * 1000))
        self._per = "minute" if self._window_ms == 60_000 else format_duration(self._window_ms)
        self._redis: GuardedRedis | None = None
        if config.redis_url:
            self._redis = GuardedRedis(
                config.redis(config.redis_url),
                name=REDIS_CLIENT,
                on_up=redis_up.set if redis_up is not None else None,
                clock=clock,
            )
            # redis-py's Script runs EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), loads the
            # script and runs it again.
            self._take = self._redis.client.register_script(TAKE)
        elif config.default_rpm or config.default_tpm:
            log.warning("rate limits are configured but there is no redis_url: nothing is limited")
        self.fail_open_count = 0
        self._fail_open: Callable[[str], None] = _counter(fail_open_total, ("redis_error", "circuit_open"))
        self._rejected: Callable[[str], None] = _counter(rejected_total, BUCKETS)

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def limits_for(self, key: ApiKey) -> tuple[int, int]:
        """(requests, tokens) per window for the key; 0 is unlimited."""
        rpm = key.rpm if key.rpm is not None else self.config.default_rpm
        tpm = key.tpm if key.tpm is not None else self.config.default_tpm
        return rpm or 0, tpm or 0

    async def start(self) -> None:
        """Load the script ahead of the first request (best effort: a failure here is not fatal) and
        start the background probe."""
        if self._redis is None:
            return
        redis = self._redis
        try:
            await redis.call(lambda: redis.client.script_load(TAKE))
        except RedisDown:
            pass  # counted and logged by the guard; requests fail open until it is back
        if self.config.probe_every_s > 0:
            await redis.start()

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()

    async def check(self, key: ApiKey, max_tokens: int | None) -> RateLimitDecision:
        """Charge one request and its max_tokens to the key's buckets.

        Raises RateLimitExceeded (429) when a bucket cannot pay, TokensExceedLimit (400) when
        max_tokens is above the key's whole tokens limit. Returns UNCHECKED when nothing applies or
        Redis is unusable.
        """
        if self._redis is None:
            return UNCHECKED
        rpm, tpm = self.limits_for(key)
        if not rpm and not tpm:
            return UNCHECKED
        charge = max_tokens
        if charge is None:
            # Capped, so that a key with a small limit is not refused for a value the client never sent.
            charge = min(self.config.default_max_tokens_charge, tpm) if tpm else 1
        elif tpm and charge > tpm:
            raise TokensExceedLimit(
                f"max_tokens is {charge}, above the API key's limit of {tpm} tokens per {self._per}; "
                "lower max_tokens.",
                param="max_tokens",
            )
        buckets: list[str] = []
        keys: list[str] = []
        args: list[int] = []
        base = f"{self.config.key_prefix}{{{key.name}}}:"
        for bucket, limit, cost in (("requests", rpm, 1), ("tokens", tpm, charge)):
            if limit:
                buckets.append(bucket)
                keys.append(base + bucket)
                args += (limit, self._window_ms, cost)
        try:
            reply: list[int] = await self._redis.call(lambda: self._take(keys=keys, args=args))
        except RedisDown as exc:
            self._skip("circuit_open" if exc.refused else "redis_error")
            return UNCHECKED
        return self._decide(key, buckets, args, reply)

    def _decide(
        self, key: ApiKey, buckets: list[str], args: list[int], reply: list[int]
    ) -> RateLimitDecision:
        allowed, retry_ms = int(reply[0]), int(reply[1])
        headers: dict[str, str] = {}
        short: list[str] = []
        for i, bucket in enumerate(buckets):
            remaining, reset_ms, is_short = (int(v) for v in reply[2 + 3 * i : 5 + 3 * i])
            headers[f"x-ratelimit-limit-{bucket}"] = str(args[3 * i])
            headers[f"x-ratelimit-remaining-{bucket}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{bucket}"] = format_duration(reset_ms)
            if is_short:
                short.append(bucket)
        if allowed:
            return RateLimitDecision(headers, checked=True)
        for bucket in short:
            self._rejected(bucket)
        headers["retry-after-ms"] = str(retry_ms)  # the openai SDKs prefer it to whole-second Retry-After
        what = " and ".join(f"{b} per {self._per} (limit {headers[f'x-ratelimit-limit-{b}']})" for b in short)
        raise RateLimitExceeded(
            f"Rate limit reached for the API key '{key.name}' on {what}. "
            f"Please try again in {format_duration(retry_ms)}.",
            retry_after_s=retry_ms / 1000,
            headers=headers,
        )

    def _skip(self, reason: str) -> None:
        self.fail_open_count += 1
        self._fail_open(reason)


def format_duration(ms: int) -> str:
    """OpenAI's reset format (Go's time.Duration): "120ms", "1s", "8.64s", "6m0s", "1h2m3s"."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = str(rest // 1000) if rest % 1000 == 0 else f"{rest / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{seconds}s"
    if minutes:
        return f"{minutes}m{seconds}s"
    return f"{seconds}s"


def _counter(parent: Counter | None, labels: tuple[str, ...]) -> Callable[[str], None]:
    if parent is None:
        return lambda _label: None
    children: dict[str, Any] = {label: parent.labels(label) for label in labels}
    return lambda label: children[label].inc()
