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
    p.add_argument("--model", help="model the load asks for (stacks that do not serve the sim models)")
    p.add_argument(
        "--skip-rollback",
        action="append",
        default=[],
        metavar="FAULT",
        help="negative controls: leave this fault in place until the drill ends, to see the drill fail",
    )
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
    from aftershock.chaos.runner import Target, remote_refusal, run_drill
    from aftershock.chaos.spec import load_drill
    from aftershock.chaos.verdict import EXIT_CODES, Verdict

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
    drills = []
    for path in paths:
        drill = load_drill(path).scaled(args.time_scale)
        if args.model:
            drill = drill.model_copy(update={"load": drill.load.model_copy(update={"model": args.model})})
        refusal = remote_refusal(drill, backend_env) if target else None
        if refusal:
            print(f"aftershock drill: {path.stem} refused against --edge: {refusal}", file=sys.stderr)
            return 2
        drills.append((path, drill))
    results: list[tuple[str, Verdict, float, Path]] = []
    for path, drill in drills:
        out = args.out / path.stem
        started = time.monotonic()
        print(f"== {path.stem}: {drill.title}", flush=True)
        verdict = run_drill(
            drill,
            out,
            target=target,
            api_key=args.api_key,
            backend_env=backend_env,
            skip_rollback=frozenset(args.skip_rollback),
        )
        results.append((path.stem, verdict, time.monotonic() - started, out))
        print(f"   {_WORDS[verdict]}  report: {out / 'report.md'}", flush=True)
    width = max(len(name) for name, *_ in results)
    print(f"\n{'drill':<{width}}  verdict    seconds  report")
    for name, verdict, seconds, out in results:
        print(f"{name:<{width}}  {_WORDS[verdict]:<9}  {seconds:7.1f}  {out / 'report.md'}")
    # The worst verdict decides: a failure over a drill too short to judge, either over a pass.
    verdicts = {v for _, v, _, _ in results}
    for worst in ("fail", "too_short"):
        if worst in verdicts:
            return EXIT_CODES[worst]
    return 0


_WORDS = {"pass": "PASS", "fail": "FAIL", "too_short": "TOO SHORT"}
