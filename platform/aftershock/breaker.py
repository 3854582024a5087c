"""Circuit breakers on pybreaker, for asyncio code.

pybreaker has no asyncio support, and its decorator counts an un-awaited coroutine as a success, so
callers write `with breaker.calling(): await ...` and each awaited outcome is fed to pybreaker
through its own `calling()` context manager, which runs its state machine. Three gaps are filled
here, thinly: pybreaker's half-open state lets every call through, where we admit a bounded number
of trial calls; it counts excluded outcomes (a cancelled call, a client error) as successes, where
we do not report them at all; and routing needs to ask "would you admit a call?" without making
one. State changes become logs and span events here, and reach whoever else cares (metrics,
breaker sharing) through a BreakerListener, so this module depends on no service.

It lives beside the other shared modules, not under backend/, because the guarded Redis
(aftershock.redis_guard) that the edge's rate limiter also uses is built on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pybreaker
from opentelemetry import trace

from aftershock import errors

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


@dataclass(frozen=True)
class BreakerConfig:
    """The one definition of a breaker's settings and their defaults."""

    fail_max: int = 5
    reset_timeout_s: float = 10.0
    half_open_max_calls: int = 1

    def __post_init__(self) -> None:
        if self.fail_max < 1 or self.reset_timeout_s <= 0 or self.half_open_max_calls < 1:
            raise ValueError("need fail_max >= 1, reset_timeout_s > 0 and half_open_max_calls >= 1")


class BreakerListener(Protocol):
    """Told about a breaker's state: `changed` is False for the initial (closed) state."""

    def state_changed(self, target: str, state: str, *, changed: bool) -> None: ...

    def forgotten(self, target: str) -> None: ...


class _Observer(pybreaker.CircuitBreakerListener):
    def __init__(self, target: str, listeners: Sequence[BreakerListener]) -> None:
        self.target = target
        self.listeners = listeners

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else "none"
        new = new_state.name
        log.warning("breaker state changed", extra={"target": self.target, "from": old, "to": new})
        trace.get_current_span().add_event(
            "breaker.state_change", {"target": self.target, "from": old, "to": new}
        )
        for listener in self.listeners:
            listener.state_changed(self.target, new, changed=True)


class Breaker:
    """One downstream target's breaker: `with breaker.calling(): await work()`.

    `is_failure(exc)` decides what counts: only system failures may trip a breaker (a client's bad
    request or a cancelled call never does).
    """

    def __init__(
        self,
        target: str,
        config: BreakerConfig,
        *,
        is_failure: Callable[[BaseException], bool],
        listeners: Sequence[BreakerListener] = (),
    ) -> None:
        self.target = target
        self.half_open_max_calls = config.half_open_max_calls
        self._trials = 0
        self._is_failure = is_failure
        self._listeners = tuple(listeners)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout_s,
            listeners=[_Observer(target, self._listeners)],
            name=target,
            # Keep the original error: callers map it to a status and may retry elsewhere.
            throw_new_error_on_trip=False,
        )
        for listener in self._listeners:
            listener.state_changed(target, CLOSED, changed=False)

    def forget(self) -> None:
        """The target is gone from the configuration: stop exporting its state."""
        for listener in self._listeners:
            listener.forgotten(self.target)

    @property
    def state(self) -> str:
        return str(self._breaker.current_state)

    @property
    def reset_timeout_s(self) -> float:
        return float(self._breaker.reset_timeout)

    def trip(self) -> None:
        """Open now (a peer saw the target fail): the usual reset timeout and trial calls follow."""
        self._breaker.open()

    def close(self) -> None:
        """Close now (a probe outside the request path found the target healthy again)."""
        if self._breaker.current_state != CLOSED:
            self._breaker.close()

    def admits(self) -> bool:
        """Would a call be let through now? (Routing skips a replica whose breaker would refuse.)"""
        state = self._breaker.current_state
        if state == pybreaker.STATE_OPEN:
            opened_at = self._breaker._state_storage.opened_at
            timeout = timedelta(seconds=self._breaker.reset_timeout)
            return opened_at is None or datetime.now(UTC) >= opened_at + timeout
        if state == pybreaker.STATE_HALF_OPEN:
            return self._trials < self.half_open_max_calls
        return True

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Guard one call; raises errors.Unavailable when the breaker refuses it."""
        if not self.admits():
            raise errors.Unavailable(
                f"Circuit breaker for {self.target} is open.",
                error_type="circuit_open",
                retry_after_s=self._breaker.reset_timeout,
            )
        if self._breaker.current_state == pybreaker.STATE_OPEN:
            # admits() said the reset timeout has passed: this call is a trial.
            self._breaker.half_open()
        trial = self._breaker.current_state != pybreaker.STATE_CLOSED
        if trial:
            self._trials += 1
        try:
            yield
        except BaseException as exc:
            # Only real failures reach pybreaker: a cancelled call or a client's bad request says
            # nothing about the target, and pybreaker would count it as a success (closing a
            # half-open breaker on no evidence).
            if self._is_failure(exc):
                self._report(exc)
            raise
        else:
            self._report(None)
        finally:
            if trial:
                self._trials -= 1

    def _report(self, exc: BaseException | None) -> None:
        """Feed one outcome to pybreaker, which moves the state machine (and tells the listener)."""
        try:
            with self._breaker.calling():
                if exc is not None:
                    raise exc
        except pybreaker.CircuitBreakerError:
            pass  # another call opened it meanwhile; this outcome changes nothing
        except BaseException as reraised:
            if reraised is not exc:
                raise
