"""Running a drill: load with Locust (headless, as a library), faults on a timeline, abort
conditions, rollbacks that always run, then the verdict and the report.

Locust is imported first: it monkey-patches the standard library for gevent, so this module is
only imported by the `aftershock drill` command.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import gevent  # type: ignore[import-untyped]
from locust import User, between
from locust.env import Environment

from aftershock.chaos.abort import abort_reason
from aftershock.chaos.check import Check
from aftershock.chaos.expectations import calls_per_request
from aftershock.chaos.faults import FaultInjector
from aftershock.chaos.journal import Step, write_journal
from aftershock.chaos.keyed import keyed_figures
from aftershock.chaos.model_servers import UpstreamProc, engine_env, start_upstream
from aftershock.chaos.record import Recorder
from aftershock.chaos.report import write_report
from aftershock.chaos.sampler import MetricsSampler, wait_routable
from aftershock.chaos.spec import Drill, Fault
from aftershock.chaos.traces import TraceCollector, traces_check
from aftershock.chaos.users import CompletionUser, EdgeUser, LoadSettings, StreamingUser
from aftershock.chaos.verdict import Verdict, judge
from aftershock.stack import Stack, StackConfig

log = logging.getLogger(__name__)

MODELS_FILE = Path(__file__).resolve().parents[3] / "chaos" / "models.yaml"
STEP_S = 0.1


@dataclass
class Target:
    """Where a drill runs: a staging edge and Toxiproxy, or a local stack started for it."""

    edge_url: str
    toxiproxy_url: str
    backend_metrics_url: str
    stack: Stack | None = None
    # The Prometheus that evaluates alerts/ for this stack (staging), to check expected alerts.
    prometheus_url: str | None = None
    # Where a local stack exports its spans, to check the trace ids a report names.
    traces: TraceCollector | None = None
    # The model server behind each replica (drills with an upstream block).
    model_servers: list[UpstreamProc] = field(default_factory=list)

    def stop(self) -> None:
        """Stops what was started for this drill: the stack, then its model servers."""
        if self.stack is not None:
            self.stack.stop()
        for server in self.model_servers:
            server.stop()

    def describe(self) -> dict[str, str]:
        where = {"edge": self.edge_url, "toxiproxy": self.toxiproxy_url}
        where["stack"] = "local (started for this drill)" if self.stack else "given"
        return where


def local_target(drill: Drill, log_dir: Path, backend_env: dict[str, str]) -> Target:
    models = MODELS_FILE if MODELS_FILE.exists() else None
    traces = TraceCollector()
    traces.start()
    otel = traces.env()
    servers: list[UpstreamProc] = []
    target = Target("", "", "", traces=traces, model_servers=servers)
    try:
        if drill.upstream is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            for i in range(drill.replicas):
                log = log_dir / f"model-server-{i}.log"
                served, itl_s = list(drill.upstream.models), drill.upstream.itl_s
                servers.append(start_upstream(served, itl_s=itl_s, log=log))
        target.stack = Stack(
            StackConfig(
                replicas=drill.replicas,
                chaos=True,
                redis=drill.redis,
                models_file=models,
                log_dir=log_dir,
                shutdown_grace_s=5,
                env={
                    "backend": {**otel, **drill.backend_env, **backend_env},
                    "edge": otel,
                    "inference": otel,
                },
                proc_env=engine_env(servers, drill.upstream.stream_idle_timeout_s) if drill.upstream else {},
            )
        )
        target.stack.start(list(drill.upstream.models) if drill.upstream else None)
        stack = target.stack
        assert stack.backend is not None
        target.edge_url, target.toxiproxy_url = stack.edge_url, stack.toxiproxy_url
        target.backend_metrics_url = f"http://127.0.0.1:{stack.backend.metrics_port}/metrics"
        if servers:
            # The edge is ready with one replica; a drill of model server faults needs every
            # replica in rotation from the start (else a fault on one has nowhere to go).
            wait_routable(target.backend_metrics_url, drill.replicas, 20.0)
    except BaseException:
        target.stop()
        traces.stop()
        raise
    return target


def _configure_users(drill: Drill, recorder: Recorder, api_key: str | None) -> list[type[User]]:
    load = drill.load
    settings = LoadSettings(
        model=load.model,
        max_tokens=load.max_tokens,
        seeded=load.seeded,
        idempotency_share=load.idempotency_share,
        duplicates=load.duplicates,
        client_retries=load.client_retries,
        timeout_s=load.request_timeout_s,
        api_key=api_key,
    )
    EdgeUser.settings = settings
    EdgeUser.recorder = recorder
    EdgeUser.reset_keys()
    EdgeUser.wait_time = between(*load.think_time_s)
    streaming = round(load.stream_share * 100)
    StreamingUser.weight = streaming
    CompletionUser.weight = 100 - streaming
    return [u for u in (CompletionUser, StreamingUser) if u.weight > 0]


def remote_refusal(drill: Drill, backend_env: dict[str, str]) -> str | None:
    """Why `drill` cannot run against a stack started elsewhere (None: it can). Backend settings
    and process faults need the stack's own means (a deploy, a restart), which a drill against a
    given edge does not have: applying the faults without them would judge the wrong system."""
    settings = {**drill.backend_env, **backend_env}
    if settings:
        names = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
        return (
            f"needs backend settings it cannot apply to a stack started elsewhere ({names}); "
            "set them in that stack's deployment and drop them from the drill, or run it on a local stack"
        )
    if drill.upstream is not None:
        return "runs its replicas in front of model servers that only a local stack started by the drill has"
    local = sorted({f.kind for f in drill.faults if f.kind in ("kill_replica", "stop_redis")})
    if local:
        kinds = ", ".join(local)
        return f"needs process faults ({kinds}) that only a local stack started by the drill can apply"
    return None


def run_drill(
    drill: Drill,
    out: Path,
    *,
    target: Target | None = None,
    api_key: str | None = None,
    backend_env: dict[str, str] | None = None,
    skip_rollback: frozenset[str] = frozenset(),
) -> Verdict:
    """Runs one drill and writes its report and journal to `out`; returns the verdict.

    `skip_rollback`: faults left in place at their end time (rolled back only when the drill
    ends), so negative controls can show the drill notices a system that did not recover."""
    started_at = datetime.now(UTC)
    short = drill.too_short()
    if short:  # refuse before spending a stack and a load on a verdict that cannot be trusted
        checks = [Check("drill long enough to judge", "too_short", short)]
        where = target.describe() if target else {"stack": "not started"}
        verdict = write_report(out, drill, checks, [], [], where, None)
        write_journal(
            out, drill, target.toxiproxy_url if target else "", checks, verdict, [], started_at, None
        )
        return verdict
    own = target is None
    if target is None:
        target = local_target(drill, out / "logs", backend_env or {})
    injector = FaultInjector(target.toxiproxy_url, target.stack, target.model_servers)
    recorder = Recorder()
    users = _configure_users(drill, recorder, api_key)
    env = Environment(user_classes=users, host=target.edge_url)
    runner = env.create_local_runner()
    sampler = MetricsSampler(target.backend_metrics_url, recorder.start)
    events: list[tuple[float, bool, Fault]] = sorted(
        [(f.start_s, True, f) for f in drill.faults] + [(f.end_s, False, f) for f in drill.faults],
        key=lambda e: (e[0], e[1]),
    )
    active: list[Fault] = []
    steps: list[Step] = []
    aborted: str | None = None

    def step(fault: Fault, apply: bool) -> None:
        begun, error = datetime.now(UTC), ""
        try:
            (injector.apply if apply else injector.rollback)(fault)
        except Exception as exc:
            error = repr(exc)
            raise
        finally:
            steps.append(Step(fault, apply, begun, datetime.now(UTC), error))

    try:
        injector.reset()
        recorder.start = sampler.start = time.monotonic()
        sampler.begin()
        runner.start(drill.load.users, spawn_rate=drill.load.spawn_rate)
        while True:
            now = time.monotonic() - recorder.start
            if now >= drill.load.duration_s:
                break
            while events and events[0][0] <= now:
                _, apply, fault = events.pop(0)
                if apply:
                    step(fault, True)
                    active.append(fault)
                elif fault in active and fault.name not in skip_rollback:
                    step(fault, False)
                    active.remove(fault)
            aborted = abort_reason(drill.abort, recorder.snapshot(), now)
            if aborted:
                log.error("drill aborted", extra={"reason": aborted})
                break
            gevent.sleep(STEP_S)
    finally:
        runner.quit()
        unfinished = recorder.unfinished(time.monotonic())
        # Rollbacks always run, whatever happened above.
        for fault in reversed(active):
            try:
                step(fault, False)
            except Exception:
                log.exception("rollback failed", extra={"fault": fault.name})
        try:
            injector.reset()
        except Exception:
            log.exception("toxiproxy reset failed")
        samples = sampler.end()
        # Requests each model server answered and faulted: evidence the faults were met.
        served_by = [_server_stats(server) for server in target.model_servers]
        if own and target.stack is not None:
            gevent.sleep(1.0)  # the services' span batches (200 ms) reach the collector
            target.stop()  # and a graceful stop flushes what is left
    records = recorder.snapshot()
    if own and target.traces is not None:
        records = target.traces.with_tries(records)
    fired = (
        _fired_alerts(target.prometheus_url, time.monotonic() - recorder.start)
        if target.prometheus_url
        else None
    )
    checks = judge(drill, records, samples, aborted, fired, unfinished)
    if own and target.traces is not None and checks[0].outcome != "too_short":
        checks.append(traces_check(records, target.traces))
        target.traces.stop()
    figures: dict[str, object] = {"calls_per_request": calls_per_request(samples, records)}
    if served_by:
        figures["model_servers"] = served_by
    if drill.load.idempotency_share:
        keyed = keyed_figures(records, samples)
        figures |= {"keys": keyed.keys, "goodput": keyed.goodput, "keys_lost": len(keyed.lost)}
        figures |= {"keys_retried_by_clients": keyed.retried, "generations_claimed": keyed.generations}
    verdict = write_report(
        out, drill, checks, records, samples, target.describe(), aborted, {"figures": figures}
    )
    write_journal(out, drill, target.toxiproxy_url, checks, verdict, steps, started_at, aborted)
    return verdict


def _server_stats(server: UpstreamProc) -> dict[str, int]:
    try:
        stats = server.stats()
    except Exception:  # a figure, not a verdict
        log.exception("model server stats unavailable")
        return {}
    return {"requests": int(stats["requests"]), "faulted": int(stats["faulted"])}


def _fired_alerts(prometheus_url: str, window_s: float) -> set[str]:
    """Alert names that were firing at any point in the last `window_s` seconds."""
    import httpx

    query = f'max_over_time(ALERTS{{alertstate="firing"}}[{max(1, int(window_s) + 1)}s])'
    resp = httpx.get(f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": query}, timeout=10)
    resp.raise_for_status()
    return {r["metric"]["alertname"] for r in resp.json()["data"]["result"]}
