"""`aftershock drill`: run one drill, several, or the whole suite, and print a verdict table."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="aftershock drill", description=__doc__)
    p.add_argument("drills", nargs="*", type=Path, help="chaos/<name>.yaml files")
    p.add_argument("--all", action="store_true", help="every drill in --suite")
    p.add_argument("--suite", type=Path, default=Path("chaos"), help="folder of drills for --all")
    p.add_argument("--out", type=Path, default=Path("reports/drills"), help="where reports go")
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every time (0.4: a short run)")
    p.add_argument("--edge", help="staging edge URL (default: start a local stack per drill)")
    p.add_argument("--toxiproxy", help="staging Toxiproxy API URL (with --edge)")
    p.add_argument("--backend-metrics", help="staging backend /metrics URL (with --edge)")
    p.add_argument(
        "--prometheus", help="Prometheus URL evaluating alerts/ (checks the drills' expected alerts)"
    )
    p.add_argument("--api-key", help="API key for the edge, if it requires one")
    p.add_argument(
        "--backend-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra backend setting for local stacks, e.g. AFTERSHOCK_BACKEND_RETRY_MAX_ATTEMPTS=1",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Imported here: Locust monkey-patches the standard library when imported.
    from aftershock import logs
    from aftershock.chaos.runner import Target, run_drill
    from aftershock.chaos.spec import load_drill

    logs.configure("drill", "WARNING")
    paths = sorted(args.suite.glob("*.yaml")) if args.all else list(args.drills)
    paths = [p for p in paths if p.name != "models.yaml"]
    if not paths:
        print("aftershock drill: name a drill file or use --all", file=sys.stderr)
        return 2
    target = None
    if args.edge:
        if not (args.toxiproxy and args.backend_metrics):
            print("aftershock drill: --edge needs --toxiproxy and --backend-metrics", file=sys.stderr)
            return 2
        target = Target(args.edge, args.toxiproxy, args.backend_metrics, prometheus_url=args.prometheus)
    backend_env = dict(item.split("=", 1) for item in args.backend_env)
    results: list[tuple[str, bool, float, Path]] = []
    for path in paths:
        drill = load_drill(path).scaled(args.time_scale)
        out = args.out / path.stem
        started = time.monotonic()
        print(f"== {path.stem}: {drill.title}", flush=True)
        passed = run_drill(drill, out, target=target, api_key=args.api_key, backend_env=backend_env)
        results.append((path.stem, passed, time.monotonic() - started, out))
        print(f"   {'PASSED' if passed else 'FAILED'}  report: {out / 'report.md'}", flush=True)
    width = max(len(name) for name, *_ in results)
    print(f"\n{'drill':<{width}}  verdict  seconds  report")
    for name, passed, seconds, out in results:
        print(f"{name:<{width}}  {'PASS' if passed else 'FAIL':<7}  {seconds:7.1f}  {out / 'report.md'}")
    return 0 if all(p for _, p, _, _ in results) else 1
