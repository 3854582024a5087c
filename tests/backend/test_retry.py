"""The retry budget and the backoff, on an injected clock: what they promise, and checks that are
shown to reject a budget or a backoff that does not keep the promise."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from aftershock.backend.retry import RetryBudget, RetryConfig, backoff_s
from aftershock.clock import FakeClock

CONFIG = RetryConfig(budget_ratio=0.2, budget_min_per_s=1.0, budget_window_s=10.0)


class Budget:
    """What a budget offers the relay: requests recorded, retries asked for."""

    def __init__(self, record: Callable[[], None], acquire: Callable[[], bool]) -> None:
        self.record_request = record
        self.try_acquire = acquire


def real_budget(config: RetryConfig, clock: FakeClock) -> Budget:
    budget = RetryBudget(config, clock)
    return Budget(budget.record_request, budget.try_acquire)


def no_budget(config: RetryConfig, clock: FakeClock) -> Budget:
    """Negative control: every retry allowed."""
    return Budget(lambda: None, lambda: True)


def storm_retries(make: Callable[[RetryConfig, FakeClock], Budget], requests: int, asks: int) -> int:
    """`requests` requests over one window, each asking for `asks` retries; how many were granted."""
    clock = FakeClock()
    budget = make(CONFIG, clock)
    granted = 0
    for _ in range(requests):
        budget.record_request()
        granted += sum(budget.try_acquire() for _ in range(asks))
        clock.advance(CONFIG.budget_window_s / (2 * requests))  # all of it inside one window
    return granted


def assert_within_budget(granted: int, requests: int) -> None:
    bound = CONFIG.budget_ratio * requests + CONFIG.budget_min_per_s * CONFIG.budget_window_s
    assert granted <= bound, f"{granted} retries for {requests} requests, budget {bound}"


def test_a_storm_is_held_to_ratio_times_requests_plus_the_floor() -> None:
    granted = storm_retries(real_budget, requests=100, asks=2)
    assert_within_budget(granted, 100)
    # Not vacuous: the budget is spent to the last retry it allows (0.2 x 100 + 1/s x 10 s).
    assert granted == 30


def test_negative_control_the_bound_rejects_an_unbounded_budget() -> None:
    granted = storm_retries(no_budget, requests=100, asks=2)
    with pytest.raises(AssertionError):
        assert_within_budget(granted, 100)


def test_the_per_second_floor_lets_a_quiet_service_retry() -> None:
    clock = FakeClock()
    budget = RetryBudget(CONFIG, clock)
    # No requests at all: min_per_s x window retries, then none.
    assert [budget.try_acquire() for _ in range(11)] == [True] * 10 + [False]


def test_the_ratio_grows_the_budget_with_traffic() -> None:
    clock = FakeClock()
    budget = RetryBudget(RetryConfig(budget_ratio=0.5, budget_min_per_s=0.0, budget_window_s=10.0), clock)
    assert not budget.try_acquire()
    for _ in range(4):
        budget.record_request()
    assert [budget.try_acquire() for _ in range(3)] == [True, True, False]  # 0.5 x 4


def test_retries_and_requests_leave_the_window() -> None:
    clock = FakeClock()
    config = RetryConfig(budget_ratio=0.5, budget_min_per_s=0.1, budget_window_s=10.0)
    budget = RetryBudget(config, clock)
    for _ in range(10):
        budget.record_request()
    assert sum(budget.try_acquire() for _ in range(20)) == 6  # 0.5 x 10 + 0.1 x 10
    clock.advance(10.0)
    assert not budget.try_acquire(), "still inside the window (the horizon is inclusive)"
    clock.advance(0.001)
    # The old requests and retries are gone: only the floor is left.
    assert [budget.try_acquire() for _ in range(2)] == [True, False]


def test_a_budget_of_zero_allows_nothing() -> None:
    budget = RetryBudget(RetryConfig(budget_ratio=0.0, budget_min_per_s=0.0), FakeClock())
    budget.record_request()
    assert not budget.try_acquire()


# -- backoff ----------------------------------------------------------------------------------------

BACKOFF = RetryConfig(backoff_base_s=0.1, backoff_cap_s=1.0)


def equal_jitter(attempt: int, config: RetryConfig, rng: random.Random) -> float:
    """Negative control: half the ceiling fixed, half random: not full jitter."""
    ceiling = min(config.backoff_cap_s, config.backoff_base_s * 2**attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def uncapped(attempt: int, config: RetryConfig, rng: random.Random) -> float:
    """Negative control: full jitter without the cap."""
    return rng.uniform(0, config.backoff_base_s * 2**attempt)


def assert_full_jitter(backoff: Callable[[int, RetryConfig, random.Random], float]) -> None:
    rng = random.Random(7)
    for attempt in range(12):
        ceiling = min(BACKOFF.backoff_cap_s, BACKOFF.backoff_base_s * 2**attempt)
        waits = [backoff(attempt, BACKOFF, rng) for _ in range(2000)]
        assert all(0.0 <= w <= ceiling for w in waits), (attempt, max(waits), ceiling)
        # Spread over the whole range: near zero and near the ceiling both happen.
        assert min(waits) < 0.02 * ceiling and max(waits) > 0.98 * ceiling, attempt
        assert abs(sum(waits) / len(waits) - ceiling / 2) < 0.05 * ceiling, attempt


def test_backoff_is_full_jitter_under_the_exponential_ceiling_and_the_cap() -> None:
    assert_full_jitter(backoff_s)
    assert backoff_s(30, BACKOFF, random.Random(1)) <= BACKOFF.backoff_cap_s


@pytest.mark.parametrize("broken", [equal_jitter, uncapped])
def test_negative_control_the_jitter_check_rejects_a_wrong_backoff(
    broken: Callable[[int, RetryConfig, random.Random], float],
) -> None:
    with pytest.raises(AssertionError):
        assert_full_jitter(broken)
