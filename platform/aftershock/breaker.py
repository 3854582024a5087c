"""Circuit breakers on pybreaker, for asyncio code.

pybreaker has no asyncio support, and its decorator counts an un-awaited coroutine as a success, so
callers write `with breaker.calling(): await ...` and each awaited outcome is fed to pybreaker
through its own `calling()` context manager, which runs its state machine. Three gaps are filled
here, thinly: pybreaker's half-open state lets every call through, where we admit a bounded number
of trial calls; it counts excluded outcomes (a cancelled call, a client error) as successes, where
we do not report them at all; and routing needs to ask "would you admit a call?" without making
one. And pybreaker waits the same reset timeout after every opening, where a target that fails
again right after its trial stays out longer each time (outlier ejection: base x consecutive
openings, capped), timed on an injected Clock so the growth is tested without sleeping; pybreaker
still counts the failures and moves the states. State changes become logs and span events here, and
reach whoever else cares (metrics, breaker sharing) through a BreakerListener, so this module
depends on no service.

It lives beside the other shared modules, not under backend/, because the guarded Redis
(aftershock.redis_guard) that the edge's rate limiter also uses is built on it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pybreaker
from opentelemetry import trace

from aftershock import errors
from aftershock.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = pybreaker.STATE_CLOSED, pybreaker.STATE_OPEN, pybreaker.STATE_HALF_OPEN


@dataclass(frozen=True)
class BreakerConfig:
    """The one definition of a breaker's settings and their defaults."""

    fail_max: int = 5
    reset_timeout_s: float = 10.0
    half_open_max_calls: int = 1
    # The n-th opening in a row (no close between) stays open n x reset_timeout_s, at most this long;
    # None keeps every opening at reset_timeout_s.
    reset_timeout_max_s: float | None = None

    def __post_init__(self) -> None:
        if self.fail_max < 1 or self.reset_timeout_s <= 0 or self.half_open_max_calls < 1:
            raise ValueError("need fail_max >= 1, reset_timeout_s > 0 and half_open_max_calls >= 1")
        if self.reset_timeout_max_s is not None and self.reset_timeout_max_s < self.reset_timeout_s:
            raise ValueError("need reset_timeout_max_s >= reset_timeout_s")

    def open_for_s(self, openings: int) -> float:
        """How long the `openings`-th opening in a row keeps the breaker open."""
        if self.reset_timeout_max_s is None:
            return self.reset_timeout_s
        return min(self.reset_timeout_max_s, self.reset_timeout_s * max(1, openings))


class BreakerListener(Protocol):
    """Told about a breaker's state: `changed` is False for the initial (closed) state."""

    def state_changed(self, target: str, state: str, *, changed: bool) -> None: ...

    def forgotten(self, target: str) -> None: ...


class _Observer(pybreaker.CircuitBreakerListener):
    def __init__(
        self, target: str, entered: Callable[[str, str], None], listeners: Sequence[BreakerListener]
    ) -> None:
        self.target = target
        self.entered = entered
        self.listeners = listeners

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        old = old_state.name if old_state is not None else "none"
        new = new_state.name
        self.entered(old, new)  # first, so listeners see this opening's reset timeout
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
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.target = target
        self.half_open_max_calls = config.half_open_max_calls
        self._config = config
        self._clock = clock
        self._openings = 0  # openings in a row, without a close between them
        self._opened_at = 0.0  # on self._clock
        self._open_for_s = config.reset_timeout_s
        self._trials = 0
        self._is_failure = is_failure
        self._listeners = tuple(listeners)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout_s,
            listeners=[_Observer(target, self._entered, self._listeners)],
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
        """How long the current (or, when closed, the last) opening keeps the breaker open."""
        return self._open_for_s

    @property
    def openings(self) -> int:
        """Openings in a row since the breaker was last closed."""
        return self._openings

    def _entered(self, old: str, new: str) -> None:
        if new == OPEN:
            if old != OPEN:  # a peer's trip while already open restarts the wait, it does not grow it
                self._openings += 1
            self._open_for_s = self._config.open_for_s(self._openings)
            self._opened_at = self._clock.now()
            # pybreaker reads it only for an outcome that arrives while open (see _report).
            self._breaker.reset_timeout = self._open_for_s
        elif new == CLOSED:
            self._openings = 0

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
            return self._clock.now() >= self._opened_at + self._open_for_s
        if state == pybreaker.STATE_HALF_OPEN:
            return self._trials < self.half_open_max_calls
        return True

    def _wait_s(self) -> float:
        """Until a refused caller may expect a trial: the rest of the opening, else a whole one."""
        if self._breaker.current_state == pybreaker.STATE_OPEN:
            return max(0.0, self._opened_at + self._open_for_s - self._clock.now())
        return self._open_for_s

    @contextlib.contextmanager
    def calling(self) -> Iterator[None]:
        """Guard one call; raises errors.Unavailable when the breaker refuses it."""
        if not self.admits():
            raise errors.Unavailable(
                f"Circuit breaker for {self.target} is open.",
                error_type="circuit_open",
                retry_after_s=self._wait_s(),
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
