"""The telemetry and dedupe deltas, every configuration measured in the same window.

    PYTHONPATH=$PWD/platform .venv/bin/python benchmarks/deltas.py [--windows 3] [--seconds 20]
        [--rated-rps 300] [--rated-streams 100] [--replicas 2] [--quick] [--also CONFIG,...]
        [--out reports/bench]

overhead.py measures each configuration on its own stack, minutes after the last one. At 300
req/s a service's CPU per request moves more between such windows on this VM than telemetry
costs: one overhead.py round read telemetry on - off as -0.12 ms per request while the same run's
saturated loops read +0.45. Here the stacks of telemetry-on, telemetry-off and dedupe-on all run
at once and take turns of one second at the offered rate, in a fresh random order every cycle
(load.interleaved_open_loops), so a slow stretch of the machine falls on all of them. Each stack's
CPU (all threads, redis-server's for dedupe) is read over the whole window, less what it spends
idle while the others have their turn (its idle rate, measured over 10 s with all stacks idle, 5 s
with --quick; the clock ticks are 10 ms, so a short measurement would be mostly rounding), and
divided by the requests it served. Two stacks of one configuration can differ by ~0.07 ms per
request per service for as long as they run (one process is luckier than another: memory layout,
which core it lands on), as much as some of the differences measured here, so each configuration
runs as --replicas stacks (2 by default), its figures are their mean, and the report prints each
replica's. Before the first window every stack serves the saturated loops overhead.py runs first
(keyed, for dedupe), so none is measured fresh. Each window gives one paired
difference; the report prints their median [min - max] beside BENCHMARKS.md's targets. A failed
request is printed beside the figures and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aftershock.stack import Stack  # noqa: E402
from discard_receiver import DiscardReceiver  # noqa: E402
from load import HttpTarget, Run, closed_loop, interleaved_open_loops  # noqa: E402
from overhead_configs import CONFIGS, DEFAULT_CONFIGS, config_names, export_to, stack_config  # noqa: E402
from procstat import CpuWindow  # noqa: E402

Figures = dict[str, float]
BASELINE = "telemetry-off"
# (configuration, figure, target): BENCHMARKS.md's targets for the two deltas.
TARGETS = [
    ("telemetry-on", "nonstream.cpu_ms_per_req.all", 0.8),
    ("dedupe-on", "nonstream.cpu_ms_per_req.all", 1.0),
    ("dedupe-on", "stream.cpu_us_per_token.edge+backend+redis", 30.0),
]
COUNTS = (".errors", ".requests")
SPREAD_KEYS = ("nonstream.cpu_ms_per_req.all", "stream.cpu_us_per_token.edge+backend+redis")
# scenario: (model, max_tokens, stream)
SCENARIOS = {"nonstream": ("bench-zero", 16, False), "stream": ("bench-zero", 64, True)}


def processes(stack: Stack) -> dict[str, int]:
    assert stack.edge and stack.backend
    pids = {"edge": stack.edge.popen.pid, "backend": stack.backend.popen.pid}
    pids["inference"] = stack.inference[0].popen.pid
    if stack.redis is not None:  # dedupe's Redis calls are part of what a keyed request costs
        pids["redis"] = stack.redis.popen.pid
    return pids


def idle_rates(stacks: dict[str, Stack], seconds: float) -> dict[str, dict[str, float]]:
    """CPU seconds per second each process spends with no load (probes, metrics, timers)."""
    window = CpuWindow(
        {f"{name}/{proc}": pid for name, s in stacks.items() for proc, pid in processes(s).items()}
    )
    window.start()
    time.sleep(seconds)
    rates: dict[str, dict[str, float]] = {name: {} for name in stacks}
    for key, spent in window.stop().items():
        name, proc = key.split("/", 1)
        rates[name][proc] = spent / seconds
    return rates


def figures_of(
    scenario: str, run: Run, spent: dict[str, float], idle: dict[str, float], off_turn_s: float
) -> Figures:
    """CPU per request (non-streamed) or per streamed token, per process and summed."""
    busy = {proc: max(0.0, s - idle[proc] * off_turn_s) for proc, s in spent.items()}
    tokens = sum(r.tokens for r in run.results) or 1
    out: Figures = {f"{scenario}.errors": float(sum(not r.ok for r in run.results))}
    out[f"{scenario}.requests"] = float(len(run.results))
    out[f"{scenario}.rps"] = len(run.results) / run.wall_s if run.wall_s else 0.0
    out[f"{scenario}.tokens_per_request"] = tokens / max(1, len(run.results))
    # Per-token CPU moves with how many tokens each SSE event carries, so print it beside them.
    out[f"{scenario}.messages_per_request"] = sum(r.messages for r in run.results) / max(1, len(run.results))
    for proc, s in spent.items():  # what was taken out as idle, to read beside the figures
        out[f"{scenario}.idle_cpu_s.{proc}"] = s - busy[proc]
    if scenario == "nonstream":
        per = {proc: s * 1000 / max(1, len(run.results)) for proc, s in busy.items()}
        unit = "cpu_ms_per_req"
    else:
        per = {proc: s * 1e6 / tokens for proc, s in busy.items()}
        unit = "cpu_us_per_token"
    for proc, value in per.items():
        out[f"{scenario}.{unit}.{proc}"] = value
    out[f"{scenario}.{unit}.all"] = sum(per.values())
    out[f"{scenario}.{unit}.edge+backend+redis"] = per["edge"] + per["backend"] + per.get("redis", 0.0)
    return out


async def window(
    stacks: dict[str, Stack], scenario: str, rate: float, seconds: float, idle: dict[str, dict[str, float]]
) -> dict[str, Figures]:
    """One window of turns at `rate` over every stack; figures per configuration."""
    targets = targets_of(stacks, scenario)
    sends = {name: t.send for name, t in targets.items()}
    pids = {f"{name}/{proc}": pid for name, s in stacks.items() for proc, pid in processes(s).items()}
    try:
        await interleaved_open_loops(sends, rate, min(2.0, seconds / 2))  # warm-up
        cpu = CpuWindow(pids)
        cpu.start()
        started = time.perf_counter()
        runs = await interleaved_open_loops(sends, rate, seconds)
        wall = time.perf_counter() - started
        spent = cpu.stop()
    finally:
        for target in targets.values():
            await target.close()
    off_turn_s = wall * (len(stacks) - 1) / len(stacks)
    out: dict[str, Figures] = {}
    for name, run in runs.items():  # what failed, by kind, beside the count in the figures
        if failed := Counter(r.error for r in run.results if not r.ok):
            print(f"warning: {name} {scenario}: {dict(failed)} failed", file=sys.stderr)
    for name in stacks:
        mine = {key.split("/", 1)[1]: s for key, s in spent.items() if key.startswith(name + "/")}
        out[name] = figures_of(scenario, runs[name], mine, idle[name], off_turn_s)
    return out


def config_of(stack: str) -> str:
    """The configuration a stack runs: stacks are named CONFIG#REPLICA."""
    return stack.split("#", 1)[0]


def by_config(per_stack: dict[str, Figures]) -> dict[str, Figures]:
    """Each configuration's figures: the mean over its replica stacks, but counts (failed and
    served requests) summed, so that one failure among replicas is still one."""
    groups: dict[str, list[Figures]] = {}
    for stack, figures in per_stack.items():
        groups.setdefault(config_of(stack), []).append(figures)
    return {
        name: {k: (sum if k.endswith(COUNTS) else statistics.fmean)(f[k] for f in fs) for k in fs[0]}
        for name, fs in groups.items()
    }


def targets_of(stacks: dict[str, Stack], scenario: str) -> dict[str, HttpTarget]:
    """One client per stack; the dedupe stacks' requests each carry a fresh Idempotency-Key."""
    model, max_tokens, stream = SCENARIOS[scenario]
    targets = {name: HttpTarget(s.edge_url, model, max_tokens, stream, 128) for name, s in stacks.items()}
    for name, target in targets.items():
        if CONFIGS[config_of(name)].dedupe:
            target.idempotency_prefix = f"deltas-{scenario}-{time.monotonic_ns()}"
    return targets


async def load_first(stacks: dict[str, Stack], scale: float) -> None:
    """overhead.py's saturated loops on every stack (2000 requests by 32 clients, 640 streams by
    64), so that what load leaves behind (pools, Redis keys, a grown heap) is there for all."""
    for scenario, clients, total in (("nonstream", 32, int(2000 * scale)), ("stream", 64, int(640 * scale))):
        for target in targets_of(stacks, scenario).values():
            try:
                await closed_loop(target.send, clients, max(clients, total))
            finally:
                await target.close()


def measure(
    stacks: dict[str, Stack], rates: dict[str, float], seconds: float, idle: dict[str, dict[str, float]]
) -> dict[str, Figures]:
    """One window per scenario; every stack's figures."""
    merged: dict[str, Figures] = {name: {} for name in stacks}
    for scenario, rate in rates.items():
        for name, figures in asyncio.run(window(stacks, scenario, rate, seconds, idle)).items():
            merged[name].update(figures)
            kept_up = figures[f"{scenario}.rps"]
            if kept_up < 0.9 * rate:  # then that stack was not measured at the common rate
                print(
                    f"warning: {name} {scenario} kept up with {kept_up:.0f} of {rate:.0f}/s", file=sys.stderr
                )
    print("window done", file=sys.stderr)
    return merged


def differences(windows: list[dict[str, Figures]]) -> dict[str, dict[str, list[float]]]:
    """Per configuration other than the baseline: each figure's paired difference, per window."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in windows[0]:
        if name == BASELINE:
            continue
        keys = [k for k in windows[0][name] if "cpu" in k and k in windows[0][BASELINE]]
        out[name] = {k: [w[name][k] - w[BASELINE][k] for w in windows] for k in keys}
    return out


def replica_spread(per_stack: list[dict[str, Figures]], say: Callable[[str], None] = print) -> None:
    """Each replica's figures (median over windows) side by side: how far apart two stacks of one
    configuration sit, the noise floor of a difference between configurations."""
    say("\n== replicas of one configuration, each a median over windows")
    for stack in sorted(per_stack[0]):
        figures = [statistics.median(w[stack][key] for w in per_stack) for key in SPREAD_KEYS]
        pairs = zip(SPREAD_KEYS, figures, strict=True)
        say(f"{stack:24s} " + "  ".join(f"{key} {v:.3f}" for key, v in pairs))


def verdict(value: float, target: float) -> str:
    return "met" if value <= target else "missed"


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):9.3f}  [{min(values):.3f} - {max(values):.3f}]"


def report(windows: list[dict[str, Figures]], say: Callable[[str], None] = print) -> bool:
    """Prints every figure and delta; True when no request failed."""
    for name in windows[0]:
        say(f"\n== {name}: median [min - max] over {len(windows)} windows")
        for key in sorted(windows[0][name]):
            say(f"{key:44s} {fmt([w[name][key] for w in windows])}")
    deltas = differences(windows)
    for name, figures in deltas.items():
        say(f"\n== {name} minus {BASELINE}, paired per window: median [min - max]")
        for key in sorted(figures):
            say(f"{key:44s} {fmt(figures[key])}")
    say("\n== targets (BENCHMARKS.md)")
    for name, key, target in TARGETS:
        if name in deltas and key in deltas[name]:
            value = statistics.median(deltas[name][key])
            say(f"{name} - {BASELINE} {key}: {value:.3f} (target <= {target}) {verdict(value, target)}")
    errors = sum(f[k] for w in windows for f in w.values() for k in f if k.endswith(".errors"))
    if errors:
        say(f"\n{errors:.0f} requests failed: every figure above counts them")
    return errors == 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="each configuration's share of a window")
    parser.add_argument("--rated-rps", type=float, default=300.0)
    parser.add_argument("--rated-streams", type=float, default=100.0)
    parser.add_argument("--quick", action="store_true", help="one short window, one stack each (smoke test)")
    parser.add_argument("--replicas", type=int, default=2, help="stacks per configuration, figures averaged")
    parser.add_argument(
        "--also", default="", help="more configurations in the same windows, e.g. telemetry-instrumentor"
    )
    parser.add_argument("--out", type=Path, default=Path("reports/bench"))
    args = parser.parse_args()
    windows, seconds, idle_s, scale, replicas = (
        # Even --quick measures idle over 5 s: over 1 s, one 10 ms tick more or less is 0.01 s/s,
        # which times 4 s of other stacks' turns is as much as redis-server's whole share.
        (1, 2.0, 5.0, 0.1, 1) if args.quick else (args.windows, args.seconds, 10.0, 1.0, args.replicas)
    )
    receiver = DiscardReceiver()
    export_to(receiver.port)
    try:
        with contextlib.ExitStack() as running:
            stacks: dict[str, Stack] = {}
            for name in config_names(",".join((*DEFAULT_CONFIGS, args.also))):
                for replica in range(1, replicas + 1):
                    config = stack_config(name, args.out / "logs" / f"deltas-{name}-{replica}")
                    stack = stacks[f"{name}#{replica}"] = running.enter_context(Stack(config))
                    stack.start()
            asyncio.run(load_first(stacks, scale))
            rates = {"nonstream": args.rated_rps, "stream": args.rated_streams}
            idle = idle_rates(stacks, idle_s)
            per_stack = [measure(stacks, rates, seconds, idle) for _ in range(windows)]
    finally:
        receiver.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"deltas-{time.strftime('%Y%m%d-%H%M%S')}.json"
    results = [by_config(w) for w in per_stack]
    raw = {"windows": results, "stacks": per_stack, "idle_cpu_s_per_s": idle, "quick": args.quick}
    path.write_text(json.dumps(raw, indent=1))
    clean = report(results)
    replica_spread(per_stack)
    print(f"\nraw results: {path}")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
