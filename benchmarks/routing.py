"""Prefix-aware routing against least-loaded placement, at equal offered load.

    .venv/bin/python benchmarks/routing.py [--replicas 4] [--rate 6] [--seconds 20] [--rounds 1]
        [--quick]

The workload is chat traffic's shape: a few long system prompts shared by many users, each request
one system prompt plus its own short question, arriving as a Poisson process. Each replica's prefix
cache holds only a couple of the system prompts, so where a request lands decides whether its
prefill is mostly cached. The same seeded arrivals are replayed against the stack with the backend's
`least_loaded` and `prefix` policies (interleaved when --rounds > 1).

Printed per policy: TTFT p50/p99 (timed from each request's scheduled arrival), the prefix-cache hit
rate over all replicas (vLLM's own counters: hit tokens / queried tokens), that rate against what one
replica holding every prefix would get (the same prompts through one unbounded cache), and each
replica's share of requests against the mean (the bound is 1.25x). JSON goes to reports/bench/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from aftershock.inference.engine import ChatTurn, render_chat  # noqa: E402
from aftershock.inference.prefix_cache import PrefixCache  # noqa: E402
from aftershock.inference.sim_tokens import prompt_tokens  # noqa: E402
from aftershock.stack import Stack, StackConfig  # noqa: E402
from load import percentile  # noqa: E402
from scrape import sample_sums  # noqa: E402

MODEL = "sim-chat"
BLOCK = 16
# Read from each replica after the run: the prefix-cache hit rate and the requests it served.
PREFIX_CACHE_SAMPLES = (
    "vllm:prefix_cache_hits_total",
    "vllm:prefix_cache_queries_total",
    "vllm:request_success_total",
)
SYSTEM_WORDS = 480  # tokens per system prompt: 30 full blocks


@dataclass(frozen=True)
class Workload:
    prompts: int
    rate: float
    seconds: float
    seed: int = 7

    def systems(self) -> list[str]:
        return [" ".join(f"persona{p}-rule{i}" for i in range(SYSTEM_WORDS)) for p in range(self.prompts)]

    def requests(self) -> list[tuple[float, list[dict[str, str]]]]:
        """(scheduled offset in seconds, chat messages) for every arrival, the same for every policy."""
        rng = random.Random(self.seed)
        systems = self.systems()
        out: list[tuple[float, list[dict[str, str]]]] = []
        at = 0.0
        i = 0
        while True:
            at += rng.expovariate(self.rate)
            if at >= self.seconds:
                return out
            system = systems[rng.randrange(len(systems))]
            user = f"user {i} asks question {rng.randrange(10**6)} about their account"
            out.append((at, [{"role": "system", "content": system}, {"role": "user", "content": user}]))
            i += 1


def models_file(directory: Path, cache_blocks: int) -> Path:
    doc = {
        "models": [
            {
                "name": MODEL,
                "ttft_s": 0.005,
                # 0.5 ms per uncached prompt token: a cold 480-token system prompt costs 0.24 s.
                "prefill_s_per_token": 0.0005,
                "itl_s": 0.005,
                "max_model_len": 4096,
                "max_output_tokens": 64,
                "block_size": BLOCK,
                "kv_cache_blocks": cache_blocks,
            }
        ]
    }
    path = directory / "routing-models.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def ideal_hit_rate(work: Workload) -> float:
    """Hit tokens / queried tokens if one replica with an unbounded cache served every request."""
    cache = PrefixCache(BLOCK, 10**9)
    hits = queried = 0
    for _, messages in work.requests():
        tokens = prompt_tokens(render_chat([ChatTurn(m["role"], m["content"]) for m in messages]))
        alloc = cache.acquire(tokens)
        hits += alloc.hit_tokens
        queried += len(tokens)
        cache.release(alloc)
    return hits / queried


async def _one(
    client: httpx.AsyncClient, url: str, due: float, messages: list[dict[str, str]]
) -> float | None:
    body = orjson.dumps({"model": MODEL, "messages": messages, "max_tokens": 4, "seed": 1, "stream": True})
    await asyncio.sleep(max(0.0, due - time.monotonic()))
    async with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as resp:
        if resp.status_code != 200:
            await resp.aread()
            return None
        async for chunk in resp.aiter_bytes():
            if b'"content"' in chunk:
                return time.monotonic() - due  # from the scheduled arrival: no coordinated omission
    return None


async def run_policy(
    policy: str, work: Workload, replicas: int, cache_blocks: int, tmp: Path
) -> dict[str, Any]:
    config = StackConfig(
        replicas=replicas,
        models_file=models_file(tmp, cache_blocks),
        env={"backend": {"AFTERSHOCK_BACKEND_ROUTING_POLICY": policy}},
        log_dir=tmp / f"logs-{policy}",
    )
    with Stack(config) as stack:
        stack.start(models=[MODEL])
        url = f"{stack.edge_url}/v1/chat/completions"
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            start = time.monotonic() + 0.5
            results = await asyncio.gather(*(_one(client, url, start + at, m) for at, m in work.requests()))
        per_replica = [sample_sums(p.metrics_port, PREFIX_CACHE_SAMPLES) for p in stack.inference]
    ttfts = [r for r in results if r is not None]
    hits = sum(r["vllm:prefix_cache_hits_total"] for r in per_replica)
    queried = sum(r["vllm:prefix_cache_queries_total"] for r in per_replica)
    served = [r["vllm:request_success_total"] for r in per_replica]
    mean = statistics.mean(served) if served else 0.0
    return {
        "policy": policy,
        "requests": len(results),
        "errors": len(results) - len(ttfts),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "hit_rate": hits / queried if queried else 0.0,
        "served_per_replica": served,
        "max_load_vs_mean": max(served) / mean if mean else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=6, help="distinct shared system prompts")
    parser.add_argument("--rate", type=float, default=6.0, help="arrivals per second (Poisson)")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a short run, for tests")
    args = parser.parse_args()
    if args.quick:
        args.replicas, args.prompts, args.rate, args.seconds = 2, 3, 4.0, 4.0
    work = Workload(args.prompts, args.rate, args.seconds)
    # Each replica's cache holds about two system prompts (plus room for running requests).
    cache_blocks = 2 * (SYSTEM_WORDS // BLOCK) + 24
    ideal = ideal_hit_rate(work)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aftershock-routing-") as tmp:
        for r in range(args.rounds):
            order = ["least_loaded", "prefix"] if r % 2 == 0 else ["prefix", "least_loaded"]
            for policy in order:
                rounds.append(asyncio.run(run_policy(policy, work, args.replicas, cache_blocks, Path(tmp))))
    print(
        f"{len(work.requests())} requests at {args.rate}/s over {args.seconds:g} s, {args.prompts} system "
        f"prompts, {args.replicas} replicas; ideal hit rate (one replica, every prefix) {ideal:.3f}"
    )
    print(
        f"{'policy':<14}{'TTFT p50':>10}{'TTFT p99':>10}{'hit rate':>10}"
        f"{'vs ideal':>10}{'max/mean':>10}{'errors':>8}"
    )
    summary: dict[str, dict[str, float]] = {}
    for policy in ("least_loaded", "prefix"):
        mine = [x for x in rounds if x["policy"] == policy]
        med = {
            k: statistics.median(x[k] for x in mine)
            for k in ("ttft_p50_s", "ttft_p99_s", "hit_rate", "max_load_vs_mean")
        }
        med["errors"] = sum(x["errors"] for x in mine)
        summary[policy] = med
        print(
            f"{policy:<14}{med['ttft_p50_s'] * 1000:>8.1f}ms{med['ttft_p99_s'] * 1000:>8.1f}ms"
            f"{med['hit_rate']:>10.3f}{med['hit_rate'] / ideal:>10.2f}"
            f"{med['max_load_vs_mean']:>10.2f}{med['errors']:>8.0f}"
        )
    base, pref = summary["least_loaded"], summary["prefix"]
    print(
        f"TTFT p50 prefix / least_loaded = {pref['ttft_p50_s'] / base['ttft_p50_s']:.2f} (target <= 0.5); "
        f"hit rate vs ideal {pref['hit_rate'] / ideal:.2f} (target >= 0.8); "
        f"max replica load {pref['max_load_vs_mean']:.2f}x mean (target <= 1.25)"
    )
    out = Path("reports/bench")
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(
        json.dumps({"ideal_hit_rate": ideal, "rounds": rounds, "summary": summary}, indent=2)
    )
    return 1 if base["errors"] or pref["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
