"""overhead.py's figures: what is derived from each round's, and the printed report."""

from __future__ import annotations

import statistics

Figures = dict[str, float]
# Each on-minus-off delta is printed for these pairs of configurations, when both ran.
PAIRS = [
    ("telemetry-on", "telemetry-off"),
    ("dedupe-on", "telemetry-off"),
    ("grpc-event-engine", "telemetry-on"),
]


def derive(f: Figures) -> Figures:
    d: Figures = {}
    # Same client kind on both sides (gRPC): what the backend hop adds. The edge speaks only HTTP,
    # so its share is read from benchmarks/peer.py (HTTP client against HTTP upstream).
    for q in ("p50", "p95", "p99"):
        d[f"added_latency_backend_hop_open50.{q}_ms"] = (
            f[f"open_nonstream_backend.{q}_ms"] - f[f"open_nonstream_direct.{q}_ms"]
        )
    d["added_ttft_backend_hop_open50.p50_ms"] = (
        f["open_stream_backend.ttft_p50_ms"] - f["open_stream_direct.ttft_p50_ms"]
    )
    d["stream_tokens_per_s_ratio"] = f["stream_full.tokens_per_s"] / f["stream_direct.tokens_per_s"]
    # What a request costs all three services (and redis-server, when dedupe is on).
    d["nonstream_full.cpu_ms_per_req.all"] = sum(
        f.get(f"nonstream_full.cpu_ms_per_req.{proc}", 0.0)
        for proc in ("edge", "backend", "inference", "redis")
    )
    d["nonstream_full.gc_cpu_ms_per_req.all"] = sum(
        f[f"nonstream_full.gc_cpu_ms_per_req.{proc}"] for proc in ("edge", "backend", "inference")
    )
    for scen in ("nonstream_full", "stream_full", "paced_full"):
        unit = "cpu_ms_per_req" if scen == "nonstream_full" else "cpu_us_per_token"
        d[f"{scen}.{unit}.edge+backend"] = f[f"{scen}.{unit}.edge"] + f[f"{scen}.{unit}.backend"]
        # In every configuration (no redis-server: none of its CPU), so that the dedupe-on minus
        # telemetry-off differences count redis-server's share of a keyed request.
        d[f"{scen}.{unit}.edge+backend+redis"] = d[f"{scen}.{unit}.edge+backend"] + f.get(
            f"{scen}.{unit}.redis", 0.0
        )
    return d


def fmt(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:10.3f}  [{min(values):.3f} - {max(values):.3f}]"


def errors_beside(key: str, rounds: list[Figures]) -> str:
    """The failed requests of the scenario a figure comes from, summed over rounds."""
    scen = key.split(".", 1)[0]
    n = sum(r.get(f"{scen}.errors", 0.0) for r in rounds)
    return f"  errors={n:.0f}" if f"{scen}.errors" in rounds[0] else ""


def print_report(raw: dict[str, list[Figures]]) -> None:
    """Median [min - max] of every figure per configuration, then the per-round deltas."""
    names = list(raw)
    keys = sorted(raw[names[0]][0])
    for name in names:
        print(f"\n== {name}: median [min - max] over {len(raw[name])} rounds")
        for key in keys:
            print(f"{key:48s} {fmt([r[key] for r in raw[name]])}{errors_beside(key, raw[name])}")
    for a_name, b_name in PAIRS:
        if a_name in raw and b_name in raw:
            # Saturated loops run each configuration at its own rate: deltas.py has the fair ones.
            print(
                f"\n== {a_name} minus {b_name}: median [min - max] of per-round differences"
                " (each at its own saturated rate; benchmarks/deltas.py compares them at one rate)"
            )
            for key in sorted(set(raw[a_name][0]) & set(raw[b_name][0])):
                if "cpu" in key or key.endswith(("p50_ms", "p99_ms")):
                    diffs = [a[key] - b[key] for a, b in zip(raw[a_name], raw[b_name], strict=True)]
                    errs = errors_beside(key, raw[a_name] + raw[b_name])
                    print(f"{key:48s} {fmt(diffs)}{errs}")
