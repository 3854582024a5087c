"""What the edge → backend → inference path costs, measured against the inference service alone.

    .venv/bin/python benchmarks/overhead.py [--rounds 3] [--quick] [--configs base,telemetry-off]
        [--allow-errors]

Starts real processes on free ports (aftershock.stack), runs every scenario of BENCHMARKS.md for
each configuration, interleaving configurations round by round, prints median [min-max] per
figure and writes the raw numbers as JSON. CPU comes from /proc/<pid>/stat (all threads) over
each measured window, redis-server's included when dedupe is on; warm-up is excluded. The garbage
collector's part of it (gc_cpu_ms_per_req) comes from each service's aftershock_gc_cpu_seconds_total.
The on-minus-off differences are printed for every figure, for reference only: saturated loops
run each configuration at its own rate, and CPU per request falls as the rate rises. The deltas
BENCHMARKS.md sets targets on come from benchmarks/deltas.py, which offers every configuration
one rate in one window.

A failed request stops the run, unless --allow-errors: then CPU is still divided by every request
sent and each figure is printed beside its scenario's error count. "Added latency" compares
clients of one kind: the backend and the inference service both over gRPC (the backend's hop);
the edge's HTTP figures are absolute here, and benchmarks/peer.py compares HTTP with HTTP. The
open loops behind it take turns of one second in one window, and every window records the share
of the machine's CPU its hypervisor took meanwhile (steal_pct): on a shared VM that, not the
services, is what most often sets a p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aftershock.stack import Stack  # noqa: E402
from discard_receiver import DiscardReceiver  # noqa: E402
from load import (  # noqa: E402
    GrpcTarget,
    HttpTarget,
    Run,
    Send,
    closed_loop,
    interleaved_open_loops,
    percentile,
)
from overhead_configs import CONFIGS, DEFAULT_CONFIGS, config_names, export_to, stack_config  # noqa: E402
from overhead_report import Figures, derive, print_report  # noqa: E402
from procstat import CpuWindow, StealWindow, rss_bytes  # noqa: E402
from scrape import gc_cpu_seconds  # noqa: E402

Load = Callable[[Send], Awaitable[Run]]  # a closed or open loop over one target's send
OPEN_RPS = 50.0  # BENCHMARKS.md's fixed Poisson rate for added latency and TTFT


class BenchError(RuntimeError):
    """A measured scenario had failed requests and --allow-errors was not given."""


ALLOW_ERRORS = False  # set from --allow-errors in main()


def _check(name: str, run: Run) -> None:
    errs = run.errors()
    if errs and not ALLOW_ERRORS:
        raise BenchError(f"{name}: {sum(errs.values())} of {len(run.results)} requests failed: {errs}")


def _lat(run: Run, prefix: str) -> Figures:
    ok = run.ok()
    lat = [r.latency_s * 1000 for r in ok]
    ttft = [r.ttft_s * 1000 for r in ok]
    return {
        f"{prefix}.p50_ms": percentile(lat, 50),
        f"{prefix}.p95_ms": percentile(lat, 95),
        f"{prefix}.p99_ms": percentile(lat, 99),
        f"{prefix}.ttft_p50_ms": percentile(ttft, 50),
        f"{prefix}.ttft_p99_ms": percentile(ttft, 99),
        f"{prefix}.errors": float(len(run.results) - len(ok)),
        f"{prefix}.requests": float(len(run.results)),
        f"{prefix}.rps": len(ok) / run.wall_s if run.wall_s else 0.0,
        f"{prefix}.tokens_per_s": sum(r.tokens for r in ok) / run.wall_s if run.wall_s else 0.0,
    }


@contextlib.contextmanager
def _generator_heap_frozen() -> Iterator[None]:
    """The generator's own start-up heap out of its collections while it measures: a full
    collection over it stalls every request in flight, which would read as the services' latency."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


async def _scenarios(stack: Stack, scale: float, open_s: float) -> Figures:
    assert stack.edge and stack.backend
    inf = stack.inference[0]
    pids = {"edge": stack.edge.popen.pid, "backend": stack.backend.popen.pid, "inference": inf.popen.pid}
    metrics_ports = {
        "edge": stack.edge.metrics_port,
        "backend": stack.backend.metrics_port,
        "inference": inf.metrics_port,
    }
    if stack.redis is not None:  # dedupe's Redis calls are part of what a keyed request costs
        pids["redis"] = stack.redis.popen.pid
    direct = f"127.0.0.1:{inf.port}"
    backend = stack.backend_target
    out: Figures = {}
    n_req = int(2000 * scale)
    n_streams = int(640 * scale)

    async def windowed(name: str, make: Callable[[], Any], warm: Load, load: Load) -> Run:
        """`warm` then `load` on one target; CPU per request and per token over `load` only, failed
        requests included (they cost CPU too), tokens as the streams counted them."""
        target = make()
        try:
            await warm(target.send)
            gc_before = {proc: gc_cpu_seconds(port) for proc, port in metrics_ports.items()}
            cpu, steal = CpuWindow(pids), StealWindow()
            with _generator_heap_frozen():
                cpu.start()
                steal.start()
                run = await load(target.send)
                spent = cpu.stop()
                out[f"{name}.steal_pct"] = steal.stop()
            gc_spent = {proc: gc_cpu_seconds(port) - gc_before[proc] for proc, port in metrics_ports.items()}
        finally:
            await target.close()
        _check(name, run)
        tokens = sum(r.tokens for r in run.results) or 1
        for proc, seconds in spent.items():
            out[f"{name}.cpu_ms_per_req.{proc}"] = seconds * 1000 / max(1, len(run.results))
            out[f"{name}.cpu_us_per_token.{proc}"] = seconds * 1e6 / tokens
        for proc, seconds in gc_spent.items():  # a part of cpu_ms_per_req, not an addition to it
            out[f"{name}.gc_cpu_ms_per_req.{proc}"] = seconds * 1000 / max(1, len(run.results))
        out[f"{name}.tokens_per_message"] = tokens / (sum(r.messages for r in run.results) or 1)
        out.update(_lat(run, name))
        return run

    async def measured(name: str, make: Callable[[], Any], concurrency: int, total: int) -> Run:
        """`total` requests from `concurrency` closed-loop clients, after a tenth as many."""
        return await windowed(
            name,
            make,
            lambda send: closed_loop(send, concurrency, max(64, total // 10)),
            lambda send: closed_loop(send, concurrency, total),
        )

    async def interleaved(targets: dict[str, Any]) -> None:
        """OPEN_RPS Poisson arrivals at each target in turn (interleaved_open_loops), open_s each
        after a short warm-up; latency from each scheduled arrival."""
        sends = {name: target.send for name, target in targets.items()}
        try:
            await interleaved_open_loops(sends, OPEN_RPS, min(2.0, open_s / 2))
            steal = StealWindow()
            with _generator_heap_frozen():
                steal.start()
                runs = await interleaved_open_loops(sends, OPEN_RPS, open_s)
                steal_pct = steal.stop()
        finally:
            for target in targets.values():
                await target.close()
        for name, run in runs.items():
            _check(name, run)
            out.update(_lat(run, name))
            out[f"{name}.steal_pct"] = steal_pct

    # 1 / 4. Non-stream, max_tokens=16, 32 closed-loop clients: direct versus the full path.
    await measured("nonstream_direct", lambda: GrpcTarget(direct, "bench-zero", 16, False), 32, n_req)
    await measured(
        "nonstream_full", lambda: HttpTarget(stack.edge_url, "bench-zero", 16, False, 32), 32, n_req
    )
    # 2. Streaming, 64 concurrent streams, max_tokens=64: saturated, then paced at 20 ms per token.
    await measured("stream_direct", lambda: GrpcTarget(direct, "bench-zero", 64, True), 64, n_streams)
    await measured(
        "stream_full", lambda: HttpTarget(stack.edge_url, "bench-zero", 64, True, 64), 64, n_streams
    )
    paced = max(64, n_streams // 4) if scale < 1 else n_streams // 2
    await measured("paced_full", lambda: HttpTarget(stack.edge_url, "bench-paced", 64, True, 64), 64, paced)
    # 3. Open loop: Poisson arrivals at 50 req/s, non-stream latency and streamed TTFT, the three
    # ways in (direct, through the backend, through the edge) in turns of one second, so that they
    # share the machine's slow seconds (latency only: the processes' CPU cannot be told apart).
    for kind, tokens, stream in (("nonstream", 16, False), ("stream", 16, True)):
        await interleaved(
            {
                f"open_{kind}_direct": GrpcTarget(direct, "bench-zero", tokens, stream),
                f"open_{kind}_backend": GrpcTarget(backend, "bench-zero", tokens, stream, backend=True),
                f"open_{kind}_full": HttpTarget(stack.edge_url, "bench-zero", tokens, stream, 128),
            }
        )
    # 5. The deltas at one offered rate: benchmarks/deltas.py, every configuration in one window.
    # 6. Peak RSS over the whole run (VmHWM: the high-water mark).
    for proc, pid in pids.items():
        if proc == "redis":
            continue
        out[f"peak_rss_mib.{proc}"] = rss_bytes(pid, "VmHWM") / 2**20
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny runs and 2 s open loops (smoke test)")
    parser.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help=f"comma list of {sorted(CONFIGS)} (base: telemetry-on)",
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="keep going when requests fail; errors printed beside figures",
    )
    args = parser.parse_args()
    global ALLOW_ERRORS
    ALLOW_ERRORS = args.allow_errors
    names = config_names(args.configs)
    receiver = DiscardReceiver()
    export_to(receiver.port)
    scale, open_s = (0.1, 2.0) if args.quick else (1.0, 20.0)
    raw: dict[str, list[Figures]] = {n: [] for n in names}
    for rnd in range(args.rounds):
        for name in names:  # interleave configurations round by round
            started = time.monotonic()
            HttpTarget.idempotency_prefix = f"bench-{rnd}" if CONFIGS[name].dedupe else None
            with Stack(stack_config(name, args.out / "logs" / f"{name}-{rnd}")) as stack:
                stack.start()
                try:
                    figures = asyncio.run(_scenarios(stack, scale, open_s))
                except BenchError as exc:
                    receiver.stop()
                    print(f"benchmark stopped, {name} round {rnd + 1}: {exc}", file=sys.stderr)
                    return 1
            figures.update(derive(figures))
            raw[name].append(figures)
            print(f"round {rnd + 1}/{args.rounds} {name}: {time.monotonic() - started:.0f}s", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps({"configs": names, "rounds": args.rounds, "quick": args.quick, "raw": raw}, indent=1)
    )
    print_report(raw)
    receiver.stop()
    print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
