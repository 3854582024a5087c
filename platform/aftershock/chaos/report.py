"""The drill report a person reads: report.md, report.json and PNG charts in one directory."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aftershock.chaos.check import Check
from aftershock.chaos.record import Record
from aftershock.chaos.sampler import Sample
from aftershock.chaos.spec import Drill
from aftershock.chaos.verdict import Verdict, during_fault, steady, verdict_of

BUCKET_S = 1.0
_STATE_NAMES = {0: "closed", 1: "open", 2: "half-open"}
_MARKS = {"pass": "PASS", "fail": "**FAIL**", "skipped": "skipped", "too_short": "**TOO SHORT**"}
HEADLINES: dict[Verdict, str] = {"pass": "PASSED", "fail": "FAILED", "too_short": "TOO SHORT TO JUDGE"}


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def timeline(records: Sequence[Record], duration_s: float) -> list[dict[str, float]]:
    """Per-second client view: latency percentiles (ms) of successes, error rate, requests."""
    rows = []
    for i in range(math.ceil(duration_s / BUCKET_S) + 1):
        start = i * BUCKET_S
        batch = [r for r in records if start <= r.started < start + BUCKET_S]
        ok = [r.latency_s * 1000 for r in batch if r.ok]
        rows.append(
            {
                "t": start,
                "requests": float(len(batch)),
                "error_rate": (1 - len(ok) / len(batch)) if batch else 0.0,
                "p50_ms": _pct(ok, 50) if ok else math.nan,
                "p95_ms": _pct(ok, 95) if ok else math.nan,
                "p99_ms": _pct(ok, 99) if ok else math.nan,
            }
        )
    return rows


def _charts(out: Path, drill: Drill, rows: list[dict[str, float]], samples: Sequence[Sample]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = []
    fig, (lat, err) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=(3, 1))
    t = [r["t"] for r in rows]
    for key, style in (("p50_ms", "-"), ("p95_ms", "--"), ("p99_ms", ":")):
        lat.plot(t, [r[key] for r in rows], style, label=key.split("_")[0])
    err.plot(t, [r["error_rate"] * 100 for r in rows], color="tab:red", label="errors")
    for ax in (lat, err):
        for fault in drill.faults:
            ax.axvspan(fault.start_s, fault.end_s, color="tab:orange", alpha=0.2)
    lat.set_ylabel("latency (ms)")
    lat.set_title(f"{drill.title}: client latency and errors (faults shaded)")
    lat.legend(loc="upper left")
    err.set_ylabel("error rate (%)")
    err.set_xlabel("seconds since load start")
    err.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=100)
    plt.close(fig)
    names.append("latency.png")

    targets = sorted({k for s in samples for k in s.breakers})
    if targets:
        fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(targets)))
        colors = {0: "tab:green", 1: "tab:red", 2: "tab:olive"}
        for row, target in enumerate(targets):
            points = [(s.t, s.breakers[target]) for s in samples if target in s.breakers]
            for (t0, state), (t1, _) in zip(points, [*points[1:], (points[-1][0] + 0.5, 0)], strict=False):
                ax.broken_barh([(t0, max(0.01, t1 - t0))], (row - 0.4, 0.8), color=colors.get(state, "grey"))
        for fault in drill.faults:
            ax.axvspan(fault.start_s, fault.end_s, color="tab:orange", alpha=0.15)
        ax.set_yticks(range(len(targets)), targets)
        ax.set_xlabel("seconds since load start (green closed, red open, olive half-open)")
        ax.set_title("circuit breaker state")
        fig.tight_layout()
        fig.savefig(out / "breakers.png", dpi=100)
        plt.close(fig)
        names.append("breakers.png")
    return names


def write_report(
    out: Path,
    drill: Drill,
    checks: Sequence[Check],
    records: Sequence[Record],
    samples: Sequence[Sample],
    target: dict[str, str],
    aborted: str | None,
    extra: dict[str, Any] | None = None,
) -> Verdict:
    """Writes the report; returns the verdict."""
    out.mkdir(parents=True, exist_ok=True)
    verdict = verdict_of(checks)
    passed = verdict == "pass"
    rows = timeline(records, drill.load.duration_s)
    charts = _charts(out, drill, rows, samples)
    failed = [r for r in records if not r.ok and r.trace_id]
    retried = [r for r in records if r.attempts > 1 and r.trace_id]
    data: dict[str, Any] = {
        "title": drill.title,
        "passed": passed,
        "verdict": verdict,
        "aborted": aborted,
        "target": target,
        "drill": drill.model_dump(mode="json"),
        "checks": [asdict(c) for c in checks],
        "summary": {
            "requests": len(records),
            "succeeded": sum(r.ok for r in records),
            "steady_requests": len(steady(drill, records)),
            "fault_requests": len(during_fault(drill, records)),
        },
        "timeline": rows,
        "breakers": [{"t": s.t, **s.breakers} for s in samples],
        "counters": [
            {"t": s.t, **s.counters, **{f"dedupe_{k}": v for k, v in s.dedupe.items()}} for s in samples
        ],
        "failed_trace_ids": [r.trace_id for r in failed[:50]],
        "retried_trace_ids": [r.trace_id for r in retried[:50]],
        "charts": charts,
        **(extra or {}),
    }
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "report.md").write_text(_markdown(drill, checks, data, failed, retried, charts))
    return verdict


def _markdown(
    drill: Drill,
    checks: Sequence[Check],
    data: dict[str, Any],
    failed: Sequence[Record],
    retried: Sequence[Record],
    charts: Sequence[str],
) -> str:
    h, load = drill.hypothesis, drill.load
    lines = [f"# {drill.title}: {HEADLINES[data['verdict']]}", ""]
    if drill.description:
        lines += [drill.description.strip(), ""]
    if data["aborted"]:
        lines += [f"**Aborted early:** {data['aborted']}", ""]
    lines += ["## Steady-state hypothesis", ""]
    lines.append(f"- success rate at least {h.min_success_rate:.2%}")
    if h.max_p99_ttft_s:
        lines.append(f"- p99 time to first token at most {h.max_p99_ttft_s}s")
    if h.max_p99_latency_s:
        lines.append(f"- p99 latency at most {h.max_p99_latency_s}s")
    lines += [
        "",
        f"Load: {load.users} users ({load.stream_share:.0%} streaming), "
        f"{load.duration_s:.0f}s on `{load.model}`, "
        f"max_tokens {load.max_tokens}, {'seeded' if load.seeded else 'unseeded'} requests"
        + (f", {load.idempotency_share:.0%} with an Idempotency-Key" if load.idempotency_share else "")
        + ".",
        f"Target: {', '.join(f'{k} {v}' for k, v in data['target'].items())}.",
        "",
        "## Fault timeline",
        "",
        "| from | to | fault | what |",
        "|---:|---:|---|---|",
    ]
    for f in drill.faults:
        what: str = f.kind
        if f.toxic is not None:
            attrs = ", ".join(f"{k}={v}" for k, v in f.toxic.attributes.items())
            extra = f", {attrs}" if attrs else ""
            what = f"{f.toxic.type} ({f.toxic.stream}, toxicity {f.toxic.toxicity}{extra})"
        if f.model_server is not None:
            set_ = f.model_server.model_dump(exclude_defaults=True, exclude={"kind"})
            what = f"model server {f.model_server.kind} ({', '.join(f'{k}={v}' for k, v in set_.items())})"
        where = f.proxy or (f"replica {f.replica}" if f.replica is not None else "redis")
        lines.append(f"| {f.start_s:.1f}s | {f.end_s:.1f}s | {f.name} | {what} on `{where}` |")
    lines += ["", "## Verdict", "", "| check | result | detail |", "|---|---|---|"]
    for c in checks:
        mark = _MARKS[c.outcome]
        lines.append(f"| {c.name} | {mark} | {c.detail} |")
    s = data["summary"]
    lines += [
        "",
        f"{s['requests']} requests, {s['succeeded']} succeeded; "
        f"{s['fault_requests']} in flight during the fault, "
        f"{s['steady_requests']} in steady state.",
        "",
    ]
    if data.get("figures"):
        shown = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in data["figures"].items()
        )
        lines += [f"Figures: {shown}.", ""]
    for chart in charts:
        lines += [f"![{chart}]({chart})", ""]
    lines += ["## Traces to look at (Jaeger: search by trace id)", ""]
    lines.append(
        "Failed requests: " + (", ".join(f"`{r.trace_id}` ({r.error})" for r in failed[:10]) or "none")
    )
    lines.append("")
    lines.append(
        "Retried requests: "
        + (", ".join(f"`{r.trace_id}` ({r.attempts} tries)" for r in retried[:10]) or "none")
    )
    lines.append("")
    return "\n".join(lines)
