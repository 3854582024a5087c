"""CPU per request and per streamed token of edge and backend, A/B between source trees, interleaved.

    PYTHONPATH=$PWD/platform .venv/bin/python benchmarks/cpu_ab.py \
        --tree before=/tmp/before/platform --tree after=$PWD/platform --rounds 3 [--profile DIR]
        [--scenarios nonstream,stream,paced]

A lean companion to overhead.py for code changes: each round starts a whole stack per tree (sim
engine, zero latency, telemetry on and exported to a discarding OTLP receiver), runs 32 closed-loop
non-streamed clients (max_tokens=16) and 64 saturated streams (max_tokens=64) through the edge, and
reads each service's utime+stime from /proc. Trees alternate within every round, so drift from other
load on the machine falls on both. --profile writes a py-spy raw profile per service per tree.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aftershock.stack import Stack, StackConfig  # noqa: E402
from discard_receiver import DiscardReceiver, HttpDiscardReceiver  # noqa: E402
from load import HttpTarget, closed_loop  # noqa: E402
from procstat import CpuWindow  # noqa: E402


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _spies(profile: Path, tag: str, pids: dict[str, int]) -> list[subprocess.Popen[bytes]]:
    """One py-spy sampler per service (raw collapsed stacks, 200 Hz, without pausing the target)."""
    profile.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-r",
                "200",
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(profile / f"{tag}-{proc}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for proc, pid in pids.items()
    ]


# name: (model, stream, concurrency, max_tokens); "paced" streams one token every 20 ms.
SCENARIOS = {
    "nonstream": ("bench-zero", False, 32, 16),
    "stream": ("bench-zero", True, 64, 64),
    "paced": ("bench-paced", True, 64, 64),
}


async def _measure(
    stack: Stack, n_req: int, n_streams: int, profile: Path | None, tag: str, scenarios: list[str]
) -> dict[str, float]:
    assert stack.edge and stack.backend
    pids = {
        "edge": stack.edge.popen.pid,
        "backend": stack.backend.popen.pid,
        "inference": stack.inference[0].popen.pid,
    }
    if stack.redis is not None:  # dedupe's Redis calls are part of what a keyed request costs
        pids["redis"] = stack.redis.popen.pid
    if stack.config.workers > 1:  # the supervisors idle; their workers do the work
        for service in ("edge", "backend"):
            for i, child in enumerate(_children(pids.pop(service))):
                pids[f"{service}.{i}"] = child
    out: dict[str, float] = {}
    for name in scenarios:
        model, stream, conc, max_tokens = SCENARIOS[name]
        total = n_streams if stream else n_req
        if name == "paced":
            total = max(conc, n_streams // 4)  # 1.3 s a stream: a quarter as many
        target = HttpTarget(stack.edge_url, model, max_tokens, stream, conc)
        spies: list[subprocess.Popen[bytes]] = []
        try:
            await closed_loop(target.send, conc, max(64, total // 10))  # warm-up
            if profile is not None:
                spies = _spies(profile, f"{tag}-{name}", pids)
                await asyncio.sleep(1.0)
            cpu = CpuWindow(pids)
            cpu.start()
            t0 = time.perf_counter()
            run = await closed_loop(target.send, conc, total)
            wall = time.perf_counter() - t0
            spent: dict[str, float] = {}
            for proc, seconds in cpu.stop().items():  # workers summed per service
                spent[proc.split(".")[0]] = spent.get(proc.split(".")[0], 0.0) + seconds
        finally:
            for spy in spies:
                spy.send_signal(2)
                spy.wait()
            await target.close()
        ok = run.ok()
        errors = len(run.results) - len(ok)
        tokens = sum(r.tokens for r in ok) or 1
        out[f"{name}.errors"] = float(errors)
        out[f"{name}.tokens_per_message"] = tokens / (sum(r.messages for r in ok) or 1)
        out[f"{name}.rps"] = len(ok) / wall
        for proc, seconds in spent.items():
            if name == "nonstream":
                out[f"{name}.cpu_ms_per_req.{proc}"] = seconds * 1000 / max(1, len(ok))
            else:
                out[f"{name}.cpu_us_per_token.{proc}"] = seconds * 1e6 / tokens
    for name in scenarios:
        key = f"{name}.cpu_ms_per_req" if name == "nonstream" else f"{name}.cpu_us_per_token"
        out[f"{key}.edge+backend"] = out[f"{key}.edge"] + out[f"{key}.backend"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tree",
        action="append",
        required=True,
        help="NAME=PATH of a platform/ directory, PATH@N for N workers each for edge and backend",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--streams", type=int, default=320)
    parser.add_argument("--profile", type=Path, default=None, help="write py-spy raw profiles here")
    parser.add_argument("--telemetry", choices=("on", "off"), default="on")
    parser.add_argument("--otlp-protocol", choices=("grpc", "http/protobuf"), default="grpc")
    parser.add_argument(
        "--dedupe", action="store_true", help="a real redis-server and a fresh Idempotency-Key per request"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes each for edge and backend")
    parser.add_argument("--scenarios", default="nonstream,stream", help=f"comma list of {sorted(SCENARIOS)}")
    args = parser.parse_args()
    scenarios = [s for s in args.scenarios.split(",") if s]
    if not scenarios or set(scenarios) - set(SCENARIOS):
        parser.error(f"--scenarios: choose from {sorted(SCENARIOS)}")
    trees = dict(t.split("=", 1) for t in args.tree)
    receiver = DiscardReceiver() if args.otlp_protocol == "grpc" else HttpDiscardReceiver()
    telemetry = (
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_EXPORTER_OTLP_PROTOCOL": args.otlp_protocol,
        }
        if args.telemetry == "on"
        else {"OTEL_SDK_DISABLED": "true"}
    )
    raw: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
    for rnd in range(args.rounds):
        for name, spec in trees.items():
            path, _, workers = spec.partition("@")
            env = {**telemetry, "PYTHONPATH": path}
            svc_env = {"inference": env, "backend": dict(env), "edge": dict(env)}
            config = StackConfig(
                replicas=1,
                models_file=HERE / "models.yaml",
                env=svc_env,
                log_dir=Path("reports/bench/logs") / f"ab-{name}-{rnd}",
                workers=int(workers or args.workers),
                redis=args.dedupe,
            )
            HttpTarget.idempotency_prefix = f"ab-{name}-{rnd}" if args.dedupe else None
            with Stack(config) as stack:
                stack.start()
                prof = args.profile if args.profile and rnd == 0 else None
                raw[name].append(
                    asyncio.run(_measure(stack, args.requests, args.streams, prof, name, scenarios))
                )
            print(f"round {rnd + 1} {name}: done", file=sys.stderr)
    receiver.stop()
    for key in sorted(next(iter(raw.values()))[0]):
        cells = []
        for name in trees:
            vals = [r[key] for r in raw[name]]
            cells.append(f"{name}: {statistics.median(vals):9.3f} [{min(vals):.3f}-{max(vals):.3f}]")
        print(f"{key:42s} " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
