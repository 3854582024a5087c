"""The `aftershock` command: `up` runs the whole stack; `inference|backend|edge` run one service."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aftershock import grpc_experiments


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """Flags given on the command line win over the environment; unset flags leave it alone."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", help="address to listen on")
    p.add_argument("--port", type=int, help="service port")
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers",
        type=int,
        help="processes sharing the port (SO_REUSEPORT); worker i serves metrics on metrics-port + i",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aftershock", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run inference, backend and edge on this machine")
    up.add_argument("--edge-port", type=int, default=8000)
    up.add_argument("--replicas", type=int, default=2, help="inference replicas (sim engine)")
    up.add_argument("--models-file", type=Path, help="sim models YAML for every replica")
    up.add_argument("--ready-timeout", type=float, default=60.0)
    up.add_argument("--chaos", action="store_true", help="put a fault proxy (Toxiproxy API) on every hop")
    up.add_argument(
        "--redis", action="store_true", help="start a local redis-server for dedupe and rate limits"
    )
    up.add_argument(
        "--workers", type=int, default=1, help="processes each for the edge and the backend (one port each)"
    )

    inf = sub.add_parser("inference", help="run the inference service")
    _common(inf)
    inf.add_argument("--engine", choices=["sim", "vllm", "openai"])
    inf.add_argument("--models-file", dest="models_file", type=Path)
    inf.add_argument("--replica-name", dest="replica_name")

    be = sub.add_parser("backend", help="run the backend service")
    _common(be)
    be.add_argument("--registry-file", dest="registry_file", type=Path)
    be.add_argument("--redis-url", dest="redis_url", help="Redis for dedupe (redis://host:port/db)")
    _workers(be)

    edge = sub.add_parser("edge", help="run the HTTP edge")
    _common(edge)
    edge.add_argument("--backend", dest="backend_target", help="backend host:port")
    edge.add_argument("--redis-url", dest="redis_url", help="Redis for rate limits (redis://host:port/db)")
    _workers(edge)
    edge.add_argument(
        "--backend-channels",
        dest="backend_channels",
        type=int,
        help="connections to the backend, used in turn (>= its workers, so every one gets traffic)",
    )
    # Set by the supervisor for its workers: bind the HTTP port with SO_REUSEPORT.
    edge.add_argument(
        "--reuse-port", dest="reuse_port", action="store_true", default=None, help=argparse.SUPPRESS
    )

    sub.add_parser("drill", help="run chaos drills (aftershock drill --help)", add_help=False)
    fp = sub.add_parser("faultproxy", help="run the Toxiproxy-API fault proxy", add_help=False)
    fp.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _supervise(
    service: str,
    argv: Sequence[str],
    workers: int,
    host: str,
    port: int,
    metrics_port: int,
    extra: Sequence[str] = (),
) -> int:
    from aftershock import logs
    from aftershock import workers as supervisor

    logs.configure(f"{service}-supervisor")
    return supervisor.supervise(
        service, argv, workers=workers, host=host, port=port, metrics_port=metrics_port, extra=extra
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["drill"]:
        from aftershock.chaos.command import main as drill_main

        return drill_main(argv[1:])
    if argv[:1] == ["toxiproxy"]:  # the command's old name, kept for one release
        print("aftershock toxiproxy is deprecated: use aftershock faultproxy", file=sys.stderr)
        argv[0] = "faultproxy"
    if argv[:1] == ["faultproxy"]:
        from aftershock.faultproxy.server import main as faultproxy_main

        return faultproxy_main(argv[1:])
    args = _parser().parse_args(argv)
    grpc_experiments.choose()  # before runtime: its tracing imports grpc, which reads it once
    from aftershock import runtime

    common = ("host", "port", "metrics_port", "log_level")
    if args.command == "inference":
        from aftershock.inference.service import run as run_inference
        from aftershock.inference.settings import InferenceSettings

        inf = InferenceSettings(**_overrides(args, (*common, "engine", "models_file", "replica_name")))
        return runtime.run("inference", inf.log_level, run_inference(inf))
    if args.command == "backend":
        from aftershock.backend.service import run as run_backend
        from aftershock.backend.settings import BackendSettings

        be = BackendSettings(**_overrides(args, (*common, "registry_file", "redis_url", "workers")))
        if be.workers > 1:
            return _supervise("backend", argv[1:], be.workers, be.host, be.port, be.metrics_port)
        return runtime.run("backend", be.log_level, run_backend(be))
    if args.command == "edge":
        from aftershock.edge.service import run as run_edge
        from aftershock.edge.settings import EdgeSettings

        names = ("backend_target", "redis_url", "workers", "backend_channels", "reuse_port")
        edge = EdgeSettings(**_overrides(args, (*common, *names)))
        if edge.workers > 1:
            return _supervise(
                "edge", argv[1:], edge.workers, edge.host, edge.port, edge.metrics_port, ("--reuse-port",)
            )
        return runtime.run("edge", edge.log_level, run_edge(edge))
    from aftershock.up import StackOptions, run_stack

    return run_stack(
        StackOptions(
            edge_port=args.edge_port,
            replicas=args.replicas,
            models_file=args.models_file,
            ready_timeout_s=args.ready_timeout,
            chaos=args.chaos,
            redis=args.redis,
            workers=args.workers,
        )
    )
