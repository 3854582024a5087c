"""The way in for every route: shed load, authenticate, then authorize and rate-limit.

`enter()` runs before the body is read (a stranger never gets a large body read, an overloaded
edge refuses in microseconds); `Pass.charge()` runs once the route knows the model and the tokens
asked for. The pass holds an in-flight slot until `release()`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aftershock import errors
from aftershock.edge.api_keys import ApiKey
from aftershock.edge.auth import Authenticator
from aftershock.edge.ratelimit import RateLimiter, RateLimitExceeded
from aftershock.metrics import EdgeMetrics


class Admission:
    def __init__(
        self,
        auth: Authenticator,
        limiter: RateLimiter,
        metrics: EdgeMetrics,
        *,
        max_in_flight: int,
        shed_retry_after_s: float,
    ) -> None:
        self.auth = auth
        self.limiter = limiter
        self._metrics = metrics
        self._max_in_flight = max_in_flight
        self._shed_retry_after_s = shed_retry_after_s
        self.in_flight = 0

    def enter(self, headers: Mapping[str, str]) -> Pass:
        """Raises ResourceExhausted (shed) or Unauthenticated; else takes an in-flight slot."""
        if self.in_flight >= self._max_in_flight:
            # Refuse in microseconds instead of queueing without bound.
            self._metrics.shed_requests_total.labels("edge").inc()
            raise errors.ResourceExhausted(
                "The edge is at its in-flight limit; retry later.",
                error_type="overloaded",
                retry_after_s=self._shed_retry_after_s,
            )
        key = self.auth.authenticate(headers)
        self.in_flight += 1
        self._metrics.in_flight.inc()
        return Pass(self, key)

    def _leave(self) -> None:
        self.in_flight -= 1
        self._metrics.in_flight.dec()


class Pass:
    """One admitted request: its API key, and the rate-limit headers its response carries."""

    def __init__(self, admission: Admission, key: ApiKey) -> None:
        self.key = key
        self.rate_headers: Mapping[str, str] = {}
        self._admission: Admission | None = admission

    async def charge(self, model: str | None, max_tokens: int | None) -> None:
        """Authorize `model` (None: no model involved) and charge the key's rate limits.

        Only valid, authorized requests are charged. Raises PermissionDenied, RateLimitExceeded
        (whose headers are kept for the error response) or TokensExceedLimit.
        """
        admission = self._admission
        assert admission is not None, "charge() after release()"
        if model is not None:
            admission.auth.authorize(self.key, model)
        try:
            self.rate_headers = (await admission.limiter.check(self.key, max_tokens)).headers
        except RateLimitExceeded as exc:
            self.rate_headers = exc.headers
            raise

    def release(self) -> None:
        """Gives the in-flight slot back; only the first call counts."""
        if self._admission is not None:
            self._admission._leave()
            self._admission = None
