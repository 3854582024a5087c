"""The configurations benchmarks/overhead.py compares: which environment each service runs with,
and whether dedupe is on. Named on its command line (--configs)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aftershock import grpc_experiments
from aftershock.stack import StackConfig

MODELS = Path(__file__).resolve().parent / "models.yaml"


def all_services(env: dict[str, str]) -> dict[str, dict[str, str]]:
    return {"inference": env, "backend": env, "edge": env}


@dataclass(frozen=True)
class BenchConfig:
    env: dict[str, dict[str, str]]
    # A real redis-server for the backend, and a fresh Idempotency-Key on every request.
    dedupe: bool = False


# export_to() fills those with telemetry on: they need the discarding receiver's port.
CONFIGS: dict[str, BenchConfig] = {
    # Spans created and exported over OTLP (to a receiver that discards them), metrics on.
    "telemetry-on": BenchConfig({}),
    # The OpenTelemetry SDK disabled (no-op spans); Prometheus metrics stay on, as they always are.
    "telemetry-off": BenchConfig(all_services({"OTEL_SDK_DISABLED": "true"})),
    # As telemetry-off, plus dedupe on every request (real redis-server, unique keys).
    "dedupe-on": BenchConfig(all_services({"OTEL_SDK_DISABLED": "true"}), dedupe=True),
    # As telemetry-on, with gRPC core's own experiment defaults instead of the services'
    # (aftershock.grpc_experiments); only when asked for: it checks that choice after an upgrade.
    "grpc-event-engine": BenchConfig({}),
    # As telemetry-on, with FastAPIInstrumentor making the edge's HTTP span instead of the edge's
    # own middleware (aftershock.edge.http_spans); only when asked for.
    "telemetry-instrumentor": BenchConfig({}),
}
DEFAULT_CONFIGS = ("telemetry-on", "telemetry-off", "dedupe-on")
# "base" is the configuration BENCHMARKS.md's targets are set for.
ALIASES = {"base": "telemetry-on"}


def export_to(port: int) -> None:
    """Point the configurations with telemetry on at the discarding OTLP receiver on `port`."""
    exported = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    CONFIGS["telemetry-on"] = BenchConfig(all_services(exported))
    CONFIGS["grpc-event-engine"] = BenchConfig(all_services({**exported, grpc_experiments.VARIABLE: ""}))
    instrumentor = {**exported, "AFTERSHOCK_EDGE_HTTP_TRACING": "instrumentor"}
    CONFIGS["telemetry-instrumentor"] = BenchConfig({**all_services(exported), "edge": instrumentor})


def config_names(arg: str) -> list[str]:
    """The configurations a --configs value names, aliases resolved, each once, in order."""
    names = [ALIASES.get(c, c) for c in arg.split(",") if c]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        raise SystemExit(
            f"unknown configuration {unknown}: choose from {sorted(CONFIGS)} or {sorted(ALIASES)}"
        )
    return list(dict.fromkeys(names))


def stack_config(name: str, log_dir: Path) -> StackConfig:
    """The stack configuration `name` runs on: one sim replica serving the benchmark's models, with
    its environment, and a redis-server when dedupe is on."""
    bench = CONFIGS[name]
    return StackConfig(replicas=1, models_file=MODELS, env=bench.env, log_dir=log_dir, redis=bench.dedupe)
