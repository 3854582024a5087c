"""Keyed requests judged as a client sees them: goodput over keys, and lost keys (ended in an
unclear error, or answered twice with different texts)."""

from __future__ import annotations

from aftershock.chaos.keyed import keyed_checks, keyed_figures
from aftershock.chaos.record import Record, client_retryable


def _try(key: str, attempt: int, ok: bool, status: int = 200, error: str = "", text: str = "t") -> Record:
    return Record(
        started=float(attempt),
        latency_s=0.1,
        ttft_s=None,
        ok=ok,
        status=status,
        stream=True,
        error=error,
        idempotency_key=key,
        text=text if ok else "",
        client_attempt=attempt,
    )


def test_a_key_retried_after_a_cut_to_its_original_answer_is_not_lost() -> None:
    records = [_try("a", 0, False, error="stream cut"), _try("a", 1, True), _try("b", 0, True)]
    f = keyed_figures(records, [])
    assert (f.keys, f.succeeded, f.retried, f.lost, f.goodput) == (2, 2, 1, [], 1.0)
    assert all(c.outcome == "pass" for c in keyed_checks(0.999, 0, records, []))


def test_a_clear_retryable_error_is_not_lost_but_costs_goodput() -> None:
    records = [_try("a", 0, False, 503, "replica_unavailable"), _try("b", 0, True)]
    f = keyed_figures(records, [])
    assert f.lost == [] and f.goodput == 0.5
    outcomes = {c.name: c.outcome for c in keyed_checks(0.999, 0, records, [])}
    assert outcomes == {"goodput of keyed requests": "fail", "no accepted request lost": "pass"}


def test_a_cut_left_unanswered_or_a_second_different_answer_is_lost() -> None:
    records = [
        _try("cut", 0, False, error="stream cut"),
        _try("twice", 0, True, text="one"),
        _try("twice", 1, True, text="two"),
        _try("500", 0, False, 500, "internal_error"),
    ]
    assert sorted(keyed_figures(records, []).lost) == ["500", "cut", "twice"]
    lost = next(c for c in keyed_checks(None, 0, records, []) if c.name == "no accepted request lost")
    assert lost.outcome == "fail" and "3 keys lost" in lost.detail


def test_what_a_client_retries() -> None:
    assert client_retryable(_try("k", 0, False, error="stream cut"))
    assert client_retryable(_try("k", 0, False, 0, "ConnectionError"))
    assert client_retryable(_try("k", 0, False, 503, "replica_unavailable"))
    assert not client_retryable(_try("k", 0, False, 400, "invalid_request"))
