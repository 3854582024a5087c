"""Aftershock against a peer gateway (LiteLLM proxy), both in front of one minimal upstream.

    .venv/bin/python benchmarks/peer.py [--rounds 3] [--requests 600] [--quick] [--no-litellm]

The same requests (32 closed-loop clients, 16-token replies, non-streamed, streamed and streamed
paced) go to the
upstream directly, through Aftershock (edge -> backend -> inference with the `openai` engine,
telemetry on and exported to a local OTLP receiver that discards spans) and through LiteLLM proxy
(one worker), in interleaved rounds. CPU per request comes from /proc/<pid>/stat of each process
(all threads; LiteLLM's whole process tree), latency from the client, both with the error count.
"Added latency" subtracts the direct figure: every client here speaks HTTP, so they compare. The
open loop behind it (10 req/s) gives the targets turns of one second in one window, as overhead.py
does, and prints the share of the machine its hypervisor took meanwhile (open steal %).

Streamed: the upstream writes its 16 events back to back, and a relay may pass on the ones that
arrived together as one event (Aftershock does; events/req shows it). Streamed paced: the upstream
writes one event every --itl-ms (10 ms), as a model server generating tokens does, so every event
is relayed on its own: the per-chunk cost of each relay.

LiteLLM is installed on first use into its own environment under .bench/ (git-ignored), at the
pinned version with every dependency pinned too (benchmarks/litellm-<version>.constraints.txt), so
the yardstick stays the same between installs and the benchmark never touches the project's venv.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from aftershock.ports import free_port  # noqa: E402
from aftershock.stack import Stack, StackConfig  # noqa: E402
from discard_receiver import DiscardReceiver  # noqa: E402
from litellm_proxy import LITELLM_VERSION, litellm_bin, litellm_config  # noqa: E402
from load import HttpTarget, Run, closed_loop, interleaved_open_loops, percentile  # noqa: E402
from procstat import CpuWindow, StealWindow  # noqa: E402

MODEL = "peer-model"
PACED_MODEL = "peer-model-paced"  # the upstream streams it one event every --itl-ms
# kind: (model, stream)
KINDS = {"nonstream": (MODEL, False), "stream": (MODEL, True), "stream-paced": (PACED_MODEL, True)}
# Well below saturation for every target here (LiteLLM streams saturate at a few per second on this
# shared machine), so latency measures the hops, not a queue.
OPEN_RATE = 10.0
Figures = dict[str, float]


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f}s")


@contextmanager
def process(cmd: list[str], log: Path, ready_url: str, env: dict[str, str] | None = None) -> Iterator[int]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=out, env={**os.environ, **(env or {})}, start_new_session=True
        )
        try:
            _wait_http(ready_url, 180, proc)
            yield proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def measure(
    targets: dict[str, tuple[HttpTarget, dict[str, int], bool]], concurrency: int, total: int, open_s: float
) -> dict[str, tuple[Run, dict[str, float], Run, float]]:
    """Per target, CPU and latency saturated (closed loop, one target at a time); then latency at a
    fixed rate well below it, the targets taking turns in one window (interleaved_open_loops) so
    that they share the machine's slow seconds, with the steal that window saw."""
    closed: dict[str, tuple[Run, dict[str, float]]] = {}
    try:
        for name, (target, pids, tree) in targets.items():
            await closed_loop(target.send, concurrency, max(64, total // 5))  # warm-up
            cpu = CpuWindow(pids, tree=tree)
            cpu.start()
            run = await closed_loop(target.send, concurrency, total)
            closed[name] = (run, cpu.stop())
        fixed = {name: Run() for name in targets}
        steal = StealWindow()
        steal.start()
        if open_s:
            sends = {name: target.send for name, (target, _, _) in targets.items()}
            fixed = await interleaved_open_loops(sends, OPEN_RATE, open_s)
        steal_pct = steal.stop()
    finally:
        for target, _, _ in targets.values():
            await target.close()
    return {name: (*closed[name], fixed[name], steal_pct) for name in targets}


def figures(name: str, run: Run, spent: dict[str, float], fixed: Run, steal_pct: float) -> Figures:
    n = max(1, len(run.results))  # failed requests cost CPU too
    lat = [r.latency_s * 1000 for r in run.ok()]
    out = {f"{name}.cpu_ms_per_req.{proc}": s * 1000 / n for proc, s in spent.items()}
    out[f"{name}.cpu_ms_per_req.total"] = sum(spent.values()) * 1000 / n
    out[f"{name}.p50_ms"] = percentile(lat, 50)
    out[f"{name}.p99_ms"] = percentile(lat, 99)
    out[f"{name}.rps"] = len(run.ok()) / run.wall_s if run.wall_s else 0.0
    out[f"{name}.tokens_per_req"] = sum(r.tokens for r in run.ok()) / max(1, len(run.ok()))
    out[f"{name}.events_per_req"] = sum(r.messages for r in run.ok()) / max(1, len(run.ok()))
    # Open loop: latency (TTFT for streams) timed from each request's scheduled arrival.
    open_ok = fixed.ok()
    out[f"{name}.open_p50_ms"] = percentile([r.latency_s * 1000 for r in open_ok], 50)
    out[f"{name}.open_p99_ms"] = percentile([r.latency_s * 1000 for r in open_ok], 99)
    out[f"{name}.open_ttft_p50_ms"] = percentile([r.ttft_s * 1000 for r in open_ok], 50)
    out[f"{name}.open_requests"] = float(len(fixed.results))
    out[f"{name}.open_steal_pct"] = steal_pct
    failed = len(run.results) - len(run.ok()) + len(fixed.results) - len(open_ok)
    out[f"{name}.errors"] = float(failed)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=600, help="measured requests per target and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--litellm-version", default=LITELLM_VERSION)
    parser.add_argument("--no-litellm", action="store_true", help="Aftershock and the upstream only")
    parser.add_argument(
        "--open-seconds", type=float, default=8.0, help=f"open loop at {OPEN_RATE:.0f} req/s; 0: none"
    )
    parser.add_argument("--itl-ms", type=float, default=10.0, help="the paced stream's pause between events")
    parser.add_argument("--quick", action="store_true", help="one round of 100 requests (smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.open_seconds = 1, 100, min(args.open_seconds, 3.0)
    logs = args.out / "logs" / f"peer-{time.strftime('%Y%m%d-%H%M%S')}"
    up_port = free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    receiver = DiscardReceiver()
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    engine = {"AFTERSHOCK_INFERENCE_ENGINE": "openai", "AFTERSHOCK_INFERENCE_OPENAI_BASE_URL": upstream}
    stack_cfg = StackConfig(
        replicas=1,
        env={"inference": {**otel, **engine}, "backend": otel, "edge": otel},
        log_dir=logs,
    )
    raw: list[Figures] = []
    up_cmd = [sys.executable, str(HERE / "upstream.py"), "--port", str(up_port), "--model", MODEL]
    up_cmd += ["--paced-model", PACED_MODEL, "--itl-ms", str(args.itl_ms)]
    with ExitStack() as ctx:
        up_pid = ctx.enter_context(process(up_cmd, logs / "upstream.log", f"{upstream}/models"))
        stack = ctx.enter_context(Stack(stack_cfg))
        stack.start(models=[MODEL, PACED_MODEL])
        assert stack.edge and stack.backend
        aftershock = {
            "edge": stack.edge.popen.pid,
            "backend": stack.backend.popen.pid,
            "inference": stack.inference[0].popen.pid,
            "upstream": up_pid,
        }
        # name: (base URL, processes whose CPU is counted, count their descendants too)
        auth: dict[str, dict[str, str]] = {}
        targets: dict[str, tuple[str, dict[str, int], bool]] = {
            "direct": (f"http://127.0.0.1:{up_port}", {"upstream": up_pid}, False),
            "aftershock": (stack.edge_url, aftershock, False),
        }
        if not args.no_litellm:
            exe = litellm_bin(args.litellm_version, logs / "litellm-install.log")
            key = "sk-" + secrets.token_hex(16)
            ll_port = free_port()
            cfg = litellm_config(logs / "litellm.json", upstream, MODEL, PACED_MODEL)
            cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(ll_port)]
            ll_pid = ctx.enter_context(
                process(
                    [*cmd, "--num_workers", "1"],
                    logs / "litellm.log",
                    f"http://127.0.0.1:{ll_port}/health/liveliness",
                    # LiteLLM refuses to start without a master key; the benchmark's client sends it.
                    env={"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": key},
                )
            )
            targets["litellm"] = (
                f"http://127.0.0.1:{ll_port}",
                {"litellm": ll_pid, "upstream": up_pid},
                True,
            )
            auth["litellm"] = {"authorization": f"Bearer {key}"}
        for rnd in range(args.rounds):
            figs: Figures = {}
            order = list(targets)
            order = order[rnd % len(order) :] + order[: rnd % len(order)]  # rotate who goes first
            for kind, (model, stream) in KINDS.items():
                made = {}
                for name in order:
                    url, pids, tree = targets[name]
                    client = HttpTarget(
                        url, model, args.max_tokens, stream, args.concurrency, headers=auth.get(name)
                    )
                    made[name] = (client, pids, tree)
                measured = asyncio.run(measure(made, args.concurrency, args.requests, args.open_seconds))
                for name, (run, spent, fixed, steal_pct) in measured.items():
                    figs.update(figures(f"{kind}.{name}", run, spent, fixed, steal_pct))
                    errs = {**run.errors(), **fixed.errors()} or 0
                    print(f"round {rnd + 1} {kind} {name}: errors {errs}", file=sys.stderr)
            raw.append(figs)
    receiver.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"peer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rounds": args.rounds, "requests": args.requests, "raw": raw}, indent=1))
    print_table(raw, list(targets))
    print(f"\nraw results: {path}")
    errors = sum(v for r in raw for k, v in r.items() if k.endswith(".errors"))
    return 1 if errors else 0


def _med(raw: list[Figures], key: str) -> str:
    values = [r[key] for r in raw if key in r]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def _added(raw: list[Figures], pre: str, direct: str, q: str) -> str:
    diffs = [r[f"{pre}.{q}"] - r[f"{direct}.{q}"] for r in raw]
    diffs = [d for d in diffs if d == d]  # NaN when a side had no successful request
    return f"{statistics.median(diffs):+.2f}" if diffs else "-"


def print_table(raw: list[Figures], names: list[str]) -> None:
    print(f"\nmedian [min-max] over {len(raw)} rounds; CPU in ms per request, latency in ms")
    procs = ["edge", "backend", "inference", "litellm", "upstream", "total"]
    rate = f"{OPEN_RATE:.0f}/s"
    head = ["kind", "target", *(f"cpu.{p}" for p in procs), "closed p50", "p99", "added p50"]
    head += [f"open {rate} p50", "p99", "added p50", "added p99", "ttft p50", "added ttft"]
    head += ["open steal %", "closed req/s", "tok/req", "events/req", "errors"]
    print(" | ".join(head))
    for kind in KINDS:
        for name in names:
            pre = f"{kind}.{name}"
            cells = [kind, name, *(_med(raw, f"{pre}.cpu_ms_per_req.{p}") for p in procs)]
            cells += [_med(raw, f"{pre}.p50_ms"), _med(raw, f"{pre}.p99_ms")]
            added = [r[f"{pre}.p50_ms"] - r[f"{kind}.direct.p50_ms"] for r in raw]
            cells.append(f"{statistics.median(added):+.2f}")
            cells += [_med(raw, f"{pre}.open_p50_ms"), _med(raw, f"{pre}.open_p99_ms")]
            for q in ("open_p50_ms", "open_p99_ms", "open_ttft_p50_ms"):
                if q == "open_ttft_p50_ms":
                    cells.append(_med(raw, f"{pre}.{q}"))
                cells.append(_added(raw, pre, f"{kind}.direct", q))
            cells += [
                _med(raw, f"{pre}.open_steal_pct"),
                _med(raw, f"{pre}.rps"),
                _med(raw, f"{pre}.tokens_per_req"),
            ]
            cells += [_med(raw, f"{pre}.events_per_req"), _med(raw, f"{pre}.errors")]
            print(" | ".join(cells))
    if "litellm" in names:
        for kind in KINDS:
            ratios = [
                (
                    r[f"{kind}.aftershock.cpu_ms_per_req.total"]
                    - r[f"{kind}.aftershock.cpu_ms_per_req.upstream"]
                )
                / (r[f"{kind}.litellm.cpu_ms_per_req.total"] - r[f"{kind}.litellm.cpu_ms_per_req.upstream"])
                for r in raw
            ]
            print(f"{kind}: Aftershock whole path / LiteLLM, CPU per request (upstream excluded): "
                  f"{statistics.median(ratios):.2f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
