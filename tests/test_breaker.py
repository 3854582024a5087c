"""Circuit breakers (pybreaker, used as a context manager): what counts, half-open trials, metrics,
and ejections that grow when a target keeps failing its trials. Time is a FakeClock: no sleeps."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from aftershock import errors
from aftershock.backend.attempt import TryTimeout, is_replica_failure
from aftershock.backend.breaker_metrics import BreakerMetrics
from aftershock.breaker import Breaker, BreakerConfig
from aftershock.clock import FakeClock
from aftershock.metrics import BackendMetrics, new_registry
from prometheus_client import CollectorRegistry

RESET_S = 0.05


def rpc_error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), code.name)


CLOCK = FakeClock()  # only ever moves forward, so the tests can share it


def make(
    registry: CollectorRegistry | None = None,
    fail_max: int = 3,
    half_open_max_calls: int = 1,
    reset_timeout_max_s: float | None = None,
) -> Breaker:
    return Breaker(
        "inference:r0",
        BreakerConfig(
            fail_max=fail_max,
            reset_timeout_s=RESET_S,
            half_open_max_calls=half_open_max_calls,
            reset_timeout_max_s=reset_timeout_max_s,
        ),
        is_failure=is_replica_failure,
        listeners=[BreakerMetrics(BackendMetrics(registry if registry is not None else new_registry()))],
        clock=CLOCK,
    )


def call(breaker: Breaker, exc: BaseException | None = None) -> None:
    """One guarded call that ends with `exc` (or succeeds); the outcome is re-raised as is."""
    with breaker.calling():
        if exc is not None:
            raise exc


def fail(breaker: Breaker, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE) -> None:
    with pytest.raises(grpc.aio.AioRpcError):
        call(breaker, rpc_error(code))


def wait_reset(times: float = 1.0) -> None:
    CLOCK.advance(RESET_S * times + 1e-9)


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (rpc_error(grpc.StatusCode.UNAVAILABLE), True),
        (rpc_error(grpc.StatusCode.INTERNAL), True),
        (rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED), True),
        (TryTimeout(), True),
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT), False),
        (rpc_error(grpc.StatusCode.NOT_FOUND), False),
        (rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), False),  # the caller's own deadline
        (rpc_error(grpc.StatusCode.CANCELLED), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_what_a_replica_breaker_counts(exc: BaseException, counts: bool) -> None:
    assert is_replica_failure(exc) is counts


def test_opens_after_fail_max_system_failures_and_refuses() -> None:
    registry = new_registry()
    breaker = make(registry)
    for _ in range(3):
        fail(breaker)
    assert breaker.state == "open"
    assert not breaker.admits()
    with pytest.raises(errors.Unavailable) as info:
        call(breaker)
    assert info.value.error_type == "circuit_open"
    assert info.value.retry_after_s == pytest.approx(RESET_S)  # the whole opening is still ahead
    CLOCK.advance(RESET_S / 2)
    assert not breaker.admits()
    assert breaker.reset_timeout_s == RESET_S
    assert registry.get_sample_value("aftershock_breaker_state", {"target": "inference:r0"}) == 1
    assert (
        registry.get_sample_value(
            "aftershock_breaker_transitions_total", {"target": "inference:r0", "state": "open"}
        )
        == 1
    )


def test_client_errors_never_trip_it() -> None:
    breaker = make()
    for _ in range(10):
        with pytest.raises(grpc.aio.AioRpcError):
            call(breaker, rpc_error(grpc.StatusCode.INVALID_ARGUMENT))
    assert breaker.state == "closed"


def test_half_open_admits_a_bounded_number_of_trials_and_success_closes() -> None:
    registry = new_registry()
    breaker = make(registry, half_open_max_calls=1)
    for _ in range(3):
        fail(breaker)
    wait_reset()
    assert breaker.admits()
    with breaker.calling():  # the trial call is in flight...
        assert breaker.state == "half-open"
        assert not breaker.admits()  # ...so no second one is let through
        with pytest.raises(errors.Unavailable):
            call(breaker)
    assert breaker.state == "closed"
    assert registry.get_sample_value("aftershock_breaker_state", {"target": "inference:r0"}) == 0


def test_failed_trial_reopens() -> None:
    breaker = make()
    for _ in range(3):
        fail(breaker)
    wait_reset()
    fail(breaker)
    assert breaker.state == "open"
    assert not breaker.admits()


def test_cancelled_trial_does_not_close_the_breaker() -> None:
    breaker = make()
    for _ in range(3):
        fail(breaker)
    wait_reset()
    with pytest.raises(asyncio.CancelledError):
        call(breaker, asyncio.CancelledError())
    assert breaker.state != "closed"


def test_forget_drops_the_state_series() -> None:
    registry = new_registry()
    breaker = make(registry)
    assert registry.get_sample_value("aftershock_breaker_state", {"target": "inference:r0"}) == 0
    breaker.forget()
    assert registry.get_sample_value("aftershock_breaker_state", {"target": "inference:r0"}) is None


def eject(breaker: Breaker, fail_max: int = 3) -> None:
    for _ in range(fail_max):
        fail(breaker)
    assert breaker.state == "open"


def test_each_failed_trial_in_a_row_keeps_it_out_one_reset_timeout_longer() -> None:
    breaker = make(reset_timeout_max_s=10 * RESET_S)
    eject(breaker)
    for openings in (1, 2, 3):
        assert breaker.openings == openings
        assert breaker.reset_timeout_s == pytest.approx(openings * RESET_S)
        wait_reset(openings - 0.01)
        assert not breaker.admits(), f"opening {openings} ended early"
        wait_reset(0.01)
        assert breaker.admits(), f"opening {openings} did not end on time"
        fail(breaker)  # the trial fails: ejected again, for longer
        assert breaker.state == "open"


def test_ejection_time_is_capped() -> None:
    breaker = make(reset_timeout_max_s=2.5 * RESET_S)
    eject(breaker)
    for openings in range(1, 6):
        assert breaker.reset_timeout_s == pytest.approx(min(openings, 2.5) * RESET_S)
        wait_reset(2.5)
        fail(breaker)
    assert breaker.openings == 6
    assert breaker.reset_timeout_s == pytest.approx(2.5 * RESET_S)


def test_a_successful_trial_closes_it_and_the_next_ejection_starts_from_the_base() -> None:
    breaker = make(reset_timeout_max_s=10 * RESET_S)
    eject(breaker)
    wait_reset()
    fail(breaker)
    assert breaker.openings == 2
    wait_reset(2)
    call(breaker)  # the trial succeeds
    assert breaker.state == "closed" and breaker.openings == 0
    eject(breaker)
    assert breaker.reset_timeout_s == pytest.approx(RESET_S)
    wait_reset()
    assert breaker.admits()


def test_without_a_cap_every_ejection_lasts_the_reset_timeout() -> None:
    breaker = make()
    eject(breaker)
    for _ in range(3):
        assert breaker.reset_timeout_s == RESET_S
        wait_reset()
        assert breaker.admits()
        fail(breaker)


def test_a_peer_trip_while_open_restarts_the_wait_without_growing_it() -> None:
    breaker = make(reset_timeout_max_s=10 * RESET_S)
    eject(breaker)
    wait_reset(0.5)
    breaker.trip()
    assert breaker.openings == 1
    wait_reset(0.9)
    assert not breaker.admits()
    wait_reset(0.1)
    assert breaker.admits()


def test_a_cap_below_the_reset_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="reset_timeout_max_s"):
        BreakerConfig(reset_timeout_s=5.0, reset_timeout_max_s=1.0)
