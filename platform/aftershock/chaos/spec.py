"""A chaos drill, as written in chaos/*.yaml.

A drill states a steady-state hypothesis (from the SLOs), a load profile, timed fault steps,
expectations and abort conditions. Times are seconds from the start of the load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from aftershock.chaos.upstream import Fault as ModelServerFault

_STRICT = ConfigDict(extra="forbid", frozen=True)
# When a drill does not say how long recovery may take, requests this soon after the last
# rollback are not held to the steady-state hypothesis.
DEFAULT_SETTLE_S = 3.0
# Least load after the recovery window that a verdict on recovery rests on (not scaled: it is
# the evidence a verdict needs, whatever the drill's length).
MIN_OBSERVATION_S = 2.0


class Hypothesis(BaseModel):
    """What "healthy" means, checked on requests outside fault windows and their recovery time."""

    model_config = _STRICT

    min_success_rate: float = Field(0.99, ge=0, le=1)
    max_p99_ttft_s: float | None = Field(None, gt=0)
    max_p99_latency_s: float | None = Field(None, gt=0)


class Load(BaseModel):
    """The Locust load profile (run headless, as a library)."""

    model_config = _STRICT

    users: int = Field(8, gt=0)
    spawn_rate: float = Field(8.0, gt=0)
    duration_s: float = Field(30.0, gt=0)
    # Share of users that stream (SSE); the rest send non-streamed requests.
    stream_share: float = Field(0.5, ge=0, le=1)
    model: str = "sim-slow"
    max_tokens: int = Field(16, gt=0)
    # Seeded requests are deterministic, so a stream may be resumed on another replica.
    seeded: bool = True
    # Share of requests sent with an Idempotency-Key, each key sent `duplicates` times.
    idempotency_share: float = Field(0.0, ge=0, le=1)
    duplicates: int = Field(2, ge=1)
    # Keyed requests cut or refused with a retryable status are sent again (same key and body)
    # by the client, up to this many times.
    client_retries: int = Field(0, ge=0)
    think_time_s: tuple[float, float] = (0.05, 0.2)
    request_timeout_s: float = Field(20.0, gt=0)


class Toxic(BaseModel):
    model_config = _STRICT

    type: Literal["latency", "bandwidth", "slow_close", "timeout", "reset_peer", "slicer", "limit_data"]
    stream: Literal["upstream", "downstream"] = "downstream"
    toxicity: float = Field(1.0, ge=0, le=1)
    attributes: dict[str, int] = Field(default_factory=dict)


class Fault(BaseModel):
    """One fault, applied at start_s and rolled back at end_s (and always at the end of the drill)."""

    model_config = _STRICT

    name: str
    start_s: float = Field(ge=0)
    end_s: float = Field(gt=0)
    # model_server: the fault the drill's model server `replica` (see Drill.upstream) serves, set
    # through its control API for the window.
    kind: Literal["toxic", "proxy_down", "kill_replica", "stop_redis", "model_server"]
    proxy: str | None = None
    toxic: Toxic | None = None
    replica: int | None = Field(None, ge=0)
    model_server: ModelServerFault | None = None

    @model_validator(mode="after")
    def _complete(self) -> Fault:
        if self.end_s <= self.start_s:
            raise ValueError(f"fault {self.name!r}: end_s must come after start_s")
        if self.kind in ("toxic", "proxy_down") and not self.proxy:
            raise ValueError(f"fault {self.name!r}: {self.kind} needs a proxy")
        if self.kind == "toxic" and self.toxic is None:
            raise ValueError(f"fault {self.name!r}: a toxic fault needs a toxic")
        if self.kind == "kill_replica" and self.replica is None:
            raise ValueError(f"fault {self.name!r}: kill_replica needs a replica index")
        if self.kind == "model_server" and (self.replica is None or self.model_server is None):
            raise ValueError(f"fault {self.name!r}: model_server needs a replica and a model_server fault")
        return self


class ModelServers(BaseModel):
    """Each inference replica runs the `openai` engine in front of its own model server
    (python -m aftershock.chaos.upstream), whose faults a drill sets with kind: model_server."""

    model_config = _STRICT

    models: tuple[str, ...] = Field(("up-chat",), min_length=1)
    itl_s: float = Field(0.02, ge=0)
    # The engine gives up on a stream with no event for this long (a stall after the first token).
    stream_idle_timeout_s: float = Field(1.0, gt=0)


class Expect(BaseModel):
    """What must be seen for the drill to pass, beyond the steady-state hypothesis."""

    model_config = _STRICT

    # Breaker targets (e.g. "inference:inference-0", "redis") that must open during the faults.
    breaker_opened: tuple[str, ...] = ()
    max_error_rate_during_fault: float | None = Field(None, ge=0, le=1)
    # After the last fault is rolled back, the success rate is back to the hypothesis within this.
    recovery_within_s: float | None = Field(None, gt=0)
    # Every response to one Idempotency-Key carries the same text; judged only once at least
    # `min_repeated_keys` keys were answered more than once (fewer proves nothing).
    no_duplicate_generations: bool = False
    min_repeated_keys: int = Field(10, ge=1)
    min_retries: int | None = Field(None, ge=0)
    # Streams resumed on another replica mid-stream (not refused or before-first-token tries).
    min_failovers: int | None = Field(None, ge=0)
    # Every breaker in breaker_opened is closed again this soon after the rollback (None: within
    # recovery_within_s). Breakers wait out their reset timeout and a trial request first.
    breakers_close: bool = True
    breakers_close_within_s: float | None = Field(None, gt=0)
    # Every replica reported healthy again this soon after the rollback (None: recovery_within_s);
    # a restarted process takes seconds to serve.
    replicas_back: bool = False
    replicas_back_within_s: float | None = Field(None, gt=0)
    # Keyed requests are deduplicated again (claimed/joined/replayed, none bypassed) after recovery.
    dedupe_resumes: bool = False
    # Keyed requests (one key per logical request, client retries): at least this share ends
    # in a success, and at most max_lost end otherwise than in success or a clear retryable
    # error, or got two different results for one key.
    min_goodput: float | None = Field(None, ge=0, le=1)
    max_lost: int | None = Field(None, ge=0)
    # Backend->inference tries per edge request stay at or under this (retry amplification).
    max_calls_per_request: float | None = Field(None, gt=0)
    # p99 time to first token of the streams started while a fault was on, at most this (seconds).
    # Not scaled by --time-scale: it is a latency, judged against toxics' latencies, which are not.
    max_ttft_p99_s: float | None = Field(None, gt=0)
    # Hedged first tokens started per edge request, at most this share (the extra engine work).
    max_hedged_share: float | None = Field(None, ge=0, le=1)
    # Every seeded request that succeeded got its whole deterministic text: no answer cut short
    # and presented as complete ([DONE] after a cut). Judged once at least this many were compared.
    min_whole_answers: int | None = Field(None, ge=1)
    # No request, failed or not, took longer than this (seconds): nothing hangs past its deadline.
    # Not scaled by --time-scale (a latency).
    max_latency_s: float | None = Field(None, gt=0)
    # At least this many requests started during the faults were answered 429 with a Retry-After
    # header, and no 429 came without one (a model server's Retry-After reaching the client).
    min_retry_after_answers: int | None = Field(None, ge=1)
    # Every replica is routable again and answers tries (OK) this soon after the last rollback.
    replica_serves_again_within_s: float | None = Field(None, gt=0)
    # Alert names that should fire; checked only when a Prometheus URL is given (staging).
    alerts: tuple[str, ...] = ()


class Abort(BaseModel):
    """Stop the load early (rollbacks still run) when the system is clearly in trouble."""

    model_config = _STRICT

    max_error_rate: float = Field(0.9, gt=0, le=1)
    window_s: float = Field(5.0, gt=0)
    # Judged only over at least this many requests: at a drill's start a handful of fast failures
    # (retry-storm refuses 3 tries in 10 before its retry budget has filled) says little, and an
    # abort 0.2 s in on 6 of 6 failed requests ended a healthy drill once.
    min_requests: int = Field(20, ge=1)


class Drill(BaseModel):
    model_config = _STRICT

    title: str
    description: str = ""
    hypothesis: Hypothesis = Hypothesis()
    load: Load = Load()
    faults: tuple[Fault, ...] = Field(min_length=1)
    expect: Expect = Expect()
    abort: Abort = Abort()
    # Stack shape for local runs.
    replicas: int = Field(2, ge=1)
    redis: bool = False
    backend_env: dict[str, str] = Field(default_factory=dict)
    # Model servers behind the replicas (the openai engine); None: the sim engine.
    upstream: ModelServers | None = None

    @model_validator(mode="after")
    def _within_load(self) -> Drill:
        for fault in self.faults:
            if fault.end_s > self.load.duration_s:
                raise ValueError(f"fault {fault.name!r} ends after the load does")
            if fault.kind == "model_server" and self.upstream is None:
                raise ValueError(f"fault {fault.name!r}: model_server faults need an upstream block")
            if fault.replica is not None and fault.replica >= self.replicas:
                raise ValueError(f"fault {fault.name!r}: no replica {fault.replica}")
        if self.upstream is not None and self.load.model not in self.upstream.models:
            raise ValueError(f"the load's model {self.load.model!r} is not served by the upstream")
        return self

    def scaled(self, factor: float) -> Drill:
        """The same drill with every time of its timeline multiplied by `factor` (a short version
        for CI): load, faults, the recovery window and the abort window. Request timeouts and
        think time describe the service and its clients, not the timeline, so they stay."""
        if factor == 1.0:
            return self
        load = self.load.model_copy(update={"duration_s": self.load.duration_s * factor})
        faults = tuple(
            f.model_copy(update={"start_s": f.start_s * factor, "end_s": f.end_s * factor})
            for f in self.faults
        )
        windows = (
            "recovery_within_s",
            "breakers_close_within_s",
            "replicas_back_within_s",
            "replica_serves_again_within_s",
        )
        e = self.expect
        expect = e.model_copy(
            update={k: getattr(e, k) * factor for k in windows if getattr(e, k) is not None}
        )
        abort = self.abort.model_copy(update={"window_s": self.abort.window_s * factor})
        return self.model_copy(update={"load": load, "faults": faults, "expect": expect, "abort": abort})

    @property
    def settle_s(self) -> float:
        """Time after the last rollback during which requests are not held to the hypothesis."""
        return self.expect.recovery_within_s or DEFAULT_SETTLE_S

    def too_short(self) -> str | None:
        """Why this drill cannot be judged at its length (None: it can): after the last rollback
        it must leave its recovery window plus MIN_OBSERVATION_S of load to judge."""
        after = self.load.duration_s - self.fault_end_s
        e = self.expect
        window = max(
            self.settle_s,
            e.breakers_close_within_s or 0.0,
            e.replicas_back_within_s or 0.0,
            e.replica_serves_again_within_s or 0.0,
        )
        if after < window + MIN_OBSERVATION_S:
            return (
                f"too short to judge: {after:.1f}s of load after the last rollback, "
                f"needs {window:.1f}s to recover + {MIN_OBSERVATION_S:.1f}s to observe"
            )
        return None

    @property
    def fault_start_s(self) -> float:
        return min(f.start_s for f in self.faults)

    @property
    def fault_end_s(self) -> float:
        return max(f.end_s for f in self.faults)


def load_drill(path: Path) -> Drill:
    return Drill.model_validate(yaml.safe_load(path.read_text()))
