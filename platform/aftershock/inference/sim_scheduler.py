"""The simulator's per-model scheduler: continuous batching over a waiting queue and a prefix cache.

Up to `max_num_seqs` sequences run, the rest wait in a FIFO queue; a scheduled request produces its
first token after `ttft_s` plus a prefill time for the part of its prompt not found in the prefix
cache, then one token every `itl_s`. Consumers are woken once per step and take every token ready
since their last read.
"""

from __future__ import annotations

import asyncio
from collections import deque

from aftershock import errors
from aftershock.clock import Clock
from aftershock.inference.engine import (
    EngineRequest,
    EngineStats,
    FinishReason,
)
from aftershock.inference.prefix_cache import Allocation, PrefixCache
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_tokens import TokenStream, count_prompt_tokens, prompt_tokens
from aftershock.metrics import EngineMetrics


class SimSequence:
    """One request inside the simulator."""

    __slots__ = (
        "alloc",
        "arrival",
        "buffer",
        "completion_tokens",
        "deadline_hit",
        "event",
        "finish",
        "first_token_at",
        "last_token_at",
        "max_tokens",
        "next_token_at",
        "prompt",
        "prompt_tokens",
        "request",
        "scheduled_at",
        "stop",
        "tail",
        "tokens",
    )

    def __init__(
        self, request: EngineRequest, prompt: str, seed: int, arrival: float, extra_ttft: float
    ) -> None:
        self.request = request
        self.tokens = TokenStream(request.model, prompt, seed)
        self.prompt = prompt
        self.prompt_tokens = count_prompt_tokens(prompt)
        self.alloc: Allocation | None = None
        self.max_tokens = request.max_tokens
        self.stop = request.stop
        self.arrival = arrival
        self.scheduled_at = 0.0
        self.next_token_at = extra_ttft  # made absolute at scheduling time
        self.first_token_at = 0.0
        self.last_token_at = 0.0
        self.completion_tokens = 0
        self.buffer: list[str] = []
        self.tail = ""  # generated text held back: it may be the start of a stop string
        self.finish: FinishReason | None = None
        self.deadline_hit = False
        self.event = asyncio.Event()


class ModelScheduler:
    def __init__(self, cfg: SimModelConfig, clock: Clock, metrics: EngineMetrics, stats: EngineStats) -> None:
        self.cfg = cfg
        self.clock = clock
        self.stats = stats
        self.cache = PrefixCache(cfg.block_size, cfg.kv_cache_blocks)
        self.waiting: deque[SimSequence] = deque()
        self.running: list[SimSequence] = []
        # Earliest deadline among waiting requests: the queue is only scanned once it has passed.
        self._wait_deadline = float("inf")
        self.wake = asyncio.Event()
        m = cfg.name
        self.g_running = metrics.num_requests_running.labels(m)
        self.g_waiting = metrics.num_requests_waiting.labels(m)
        self.g_kv = metrics.kv_cache_usage_perc.labels(m)
        self.h_ttft = metrics.time_to_first_token_seconds.labels(m)
        self.h_itl = metrics.inter_token_latency_seconds.labels(m)
        self.h_e2e = metrics.e2e_request_latency_seconds.labels(m)
        self.h_queue = metrics.request_queue_time_seconds.labels(m)
        self.c_prompt = metrics.prompt_tokens_total.labels(m)
        self.c_gen = metrics.generation_tokens_total.labels(m)
        self.c_finished = {r: metrics.request_success_total.labels(m, r) for r in ("stop", "length", "abort")}
        self.c_cache_queries = metrics.prefix_cache_queries_total.labels(m)
        self.c_cache_hits = metrics.prefix_cache_hits_total.labels(m)

    def submit(self, seq: SimSequence) -> None:
        if len(self.waiting) >= self.cfg.max_waiting:
            raise errors.ResourceExhausted(
                f"Model '{self.cfg.name}' is overloaded: {len(self.waiting)} requests waiting.",
                error_type="engine_overloaded",
                retry_after_s=1.0,
            )
        self.waiting.append(seq)
        if seq.request.deadline is not None and seq.request.deadline < self._wait_deadline:
            self._wait_deadline = seq.request.deadline
        self.g_waiting.set(len(self.waiting))
        self.wake.set()

    def abort(self, seq: SimSequence) -> None:
        """The consumer went away (client gone, deadline, shutdown): stop working on it."""
        if seq.finish is not None:
            return
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self._finish(seq, "abort", self.clock.now())
        self._update_gauges()

    def _finish(self, seq: SimSequence, reason: FinishReason, now: float) -> None:
        seq.finish = reason
        if seq.alloc is not None:
            self.cache.release(seq.alloc)
        seq.event.set()
        self.c_finished[reason].inc()
        self.stats.finished += 1
        if reason == "abort":
            self.stats.aborted += 1
        else:
            self.h_e2e.observe(now - seq.arrival)

    def _update_gauges(self) -> None:
        self.g_running.set(len(self.running))
        self.g_waiting.set(len(self.waiting))
        self.g_kv.set(self.cache.usage)

    def _admit(self, now: float) -> None:
        cfg = self.cfg
        while self.waiting and len(self.running) < cfg.max_num_seqs:
            seq = self.waiting.popleft()
            seq.scheduled_at = now
            hit = self._allocate(seq)
            seq.next_token_at = (
                now + cfg.ttft_s + cfg.prefill_s_per_token * (seq.prompt_tokens - hit) + seq.next_token_at
            )
            self.h_queue.observe(now - seq.arrival)
            self.c_prompt.inc(seq.prompt_tokens)
            self.running.append(seq)

    def _allocate(self, seq: SimSequence) -> int:
        """Take KV blocks for a request being scheduled; returns its prompt tokens found cached."""
        tokens = prompt_tokens(seq.prompt)
        if not self.cfg.enable_prefix_caching:
            # Still holds blocks (usage counts them) but finds and leaves nothing to share.
            seq.alloc = self.cache.hold(len(tokens))
            return 0
        seq.alloc = self.cache.acquire(tokens)
        self.c_cache_queries.inc(len(tokens))
        self.c_cache_hits.inc(seq.alloc.hit_tokens)
        return seq.alloc.hit_tokens

    def _expire_waiting(self, now: float) -> None:
        """Requests whose deadline passed while they were still queued never get scheduled."""
        keep: deque[SimSequence] = deque()
        earliest = float("inf")
        for seq in self.waiting:
            deadline = seq.request.deadline
            if deadline is not None and now >= deadline:
                seq.deadline_hit = True
                self._finish(seq, "abort", now)
                continue
            keep.append(seq)
            if deadline is not None and deadline < earliest:
                earliest = deadline
        self.waiting = keep
        self._wait_deadline = earliest

    def _emit(self, seq: SimSequence, now: float) -> None:
        token = seq.tokens.next()
        seq.completion_tokens += 1
        if seq.completion_tokens == 1:
            seq.first_token_at = now
            self.h_ttft.observe(now - seq.arrival)
        else:
            self.h_itl.observe(now - seq.last_token_at)
        seq.last_token_at = now
        if seq.alloc is not None:
            self.cache.grow(seq.alloc, seq.prompt_tokens + seq.completion_tokens)
        reason: FinishReason | None = None
        if seq.stop:
            # Text that may be the start of a stop string is held back until it is known not to be.
            token, seq.tail, hit = split_at_stop(seq.tail + token, seq.stop)
            if hit:
                reason = "stop"
        if reason is None and seq.completion_tokens >= seq.max_tokens:
            reason = "length"
            token += seq.tail  # nothing more can complete a stop string
            seq.tail = ""
        if token:
            seq.buffer.append(token)
        if reason is not None:
            self._finish(seq, reason, now)
        else:
            seq.next_token_at = now + self.cfg.itl_s
            seq.event.set()

    async def run(self) -> None:
        clock = self.clock
        while True:
            if not self.running and not self.waiting:
                self.wake.clear()
                await self.wake.wait()
            now = clock.now()
            if now >= self._wait_deadline:
                self._expire_waiting(now)
            self._admit(now)
            next_at = float("inf")
            emitted = 0
            done = False
            for seq in self.running:
                deadline = seq.request.deadline
                if deadline is not None and now >= deadline:
                    seq.deadline_hit = True
                    self._finish(seq, "abort", now)
                    done = True
                    continue
                if now >= seq.next_token_at:
                    self._emit(seq, now)
                    emitted += 1
                    if seq.finish is not None:
                        done = True
                        continue
                if seq.next_token_at < next_at:
                    next_at = seq.next_token_at
                if deadline is not None and deadline < next_at:
                    next_at = deadline
            if done:
                self.running = [s for s in self.running if s.finish is None]
            if emitted:
                self.c_gen.inc(emitted)
                self.stats.generated_tokens += emitted
            self._update_gauges()
            if self.waiting and self._wait_deadline < next_at:
                next_at = self._wait_deadline
            delay = next_at - clock.now()
            if delay > 0 and next_at != float("inf"):
                await clock.sleep(delay)
            else:
                # Zero simulated latency: one decode step per event-loop turn, so readers keep up.
                await asyncio.sleep(0)


def split_at_stop(pending: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split unsent text into (send now, hold back, stop found).

    With a stop string in `pending`, everything before its start is sent and generation stops
    (the stop string itself is never sent). Otherwise the longest tail of `pending` that could
    still grow into a stop string is held back, as vLLM does, so no stop text ever leaks out.
    """
    best = -1
    for stop in stops:
        idx = pending.find(stop)
        if idx >= 0 and (best < 0 or idx < best):
            best = idx
    if best >= 0:
        return pending[:best], "", True
    hold = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(pending)), hold, -1):
            if stop.startswith(pending[-n:]):
                hold = n
                break
    return pending[: len(pending) - hold], pending[len(pending) - hold :], False
