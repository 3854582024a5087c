"""The simulator engine: vLLM-shaped behaviour without a GPU.

Each model has a scheduler loop doing continuous batching: up to `max_num_seqs` sequences run, the
rest wait in a FIFO queue; a scheduled request produces its first token after `ttft_s` plus a prefill
time that grows with the part of its prompt not found in the replica's prefix cache (see
prefix_cache.py), then one token every `itl_s`. Tokens are a deterministic function of
(model, prompt, seed). Consumers are woken once per step and take every token ready since their last
read, so a slow reader gets several tokens per message instead of a backlog of messages.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator, Sequence

from aftershock import errors
from aftershock.clock import SYSTEM_CLOCK, Clock
from aftershock.inference.engine import (
    EngineOutput,
    EngineRequest,
    EngineStats,
    ModelSpec,
    render_chat,
)
from aftershock.inference.load import EngineLoad
from aftershock.inference.prefix_cache import PrefixCache
from aftershock.inference.sim_config import SimModelConfig
from aftershock.inference.sim_scheduler import ModelScheduler, SimSequence
from aftershock.inference.sim_tokens import count_prompt_tokens
from aftershock.metrics import EngineMetrics

log = logging.getLogger(__name__)


class SimEngine:
    kind = "sim"
    # Tokens are a function of (model, prompt, seed): every replica yields the same stream.
    reproducible = True

    def __init__(
        self,
        models: Sequence[SimModelConfig],
        metrics: EngineMetrics,
        *,
        clock: Clock = SYSTEM_CLOCK,
        fault_seed: int | None = None,
    ) -> None:
        if not models:
            raise ValueError("the simulator needs at least one model")
        self.stats = EngineStats()
        self._clock = clock
        self._metrics = metrics
        self._configs = {m.name: m for m in models}
        self._schedulers = {m.name: ModelScheduler(m, clock, metrics, self.stats) for m in models}
        self._tasks: list[asyncio.Task[None]] = []
        self._faults = random.Random(fault_seed)

    async def start(self) -> None:
        for name, sched in self._schedulers.items():
            self._tasks.append(asyncio.create_task(sched.run(), name=f"sim-scheduler-{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def models(self) -> Sequence[ModelSpec]:
        return [
            ModelSpec(c.name, c.max_model_len, c.max_output_tokens, self.kind) for c in self._configs.values()
        ]

    def prefix_cache(self, model: str) -> PrefixCache:
        """The model's prefix cache, for inspection (tests, debugging)."""
        return self._schedulers[model].cache

    def load(self) -> EngineLoad:
        scheds = self._schedulers.values()
        return EngineLoad(
            running=sum(len(s.running) for s in scheds),
            waiting=sum(len(s.waiting) for s in scheds),
            kv_cache_usage=max((s.cache.usage for s in scheds), default=0.0),
        )

    def _inject_fault(self, cfg: SimModelConfig) -> float:
        """Maybe raise an injected status-level fault; returns extra time to first token (slow start)."""
        if not (cfg.fault_overloaded_rate or cfg.fault_error_rate or cfg.fault_slow_start_rate):
            return 0.0
        roll = self._faults.random()
        if roll < cfg.fault_overloaded_rate:
            self._metrics.faults_injected_total.labels(cfg.name, "overloaded").inc()
            raise errors.ResourceExhausted(
                "Engine overloaded (injected fault).",
                error_type="engine_overloaded",
                retry_after_s=cfg.fault_overloaded_hold_s or 1.0,
                hold_s=cfg.fault_overloaded_hold_s,
            )
        roll -= cfg.fault_overloaded_rate
        if roll < cfg.fault_error_rate:
            self._metrics.faults_injected_total.labels(cfg.name, "error").inc()
            raise errors.Internal("Engine failed (injected fault).")
        roll -= cfg.fault_error_rate
        if roll < cfg.fault_slow_start_rate:
            self._metrics.faults_injected_total.labels(cfg.name, "slow_start").inc()
            return cfg.fault_slow_start_s
        return 0.0

    def _validate(self, request: EngineRequest) -> tuple[SimModelConfig, str, int]:
        """Check the request against the model; returns its config, prompt and max_tokens."""
        cfg = self._configs.get(request.model)
        if cfg is None:
            raise errors.ModelNotFound(request.model)
        if request.max_tokens < 0:
            raise errors.InvalidArgument("max_tokens must be at least 1.", param="max_tokens")
        if request.max_tokens > cfg.max_output_tokens:
            raise errors.InvalidArgument(
                f"max_tokens is {request.max_tokens}, above this model's limit of {cfg.max_output_tokens}.",
                param="max_tokens",
            )
        if request.messages is not None:
            prompt = render_chat(request.messages)
        elif request.prompt is not None:
            prompt = request.prompt
        else:
            raise errors.InvalidArgument("A prompt or chat messages are required.", param="prompt")
        prompt_tokens = count_prompt_tokens(prompt)
        max_tokens = request.max_tokens or min(
            cfg.default_max_tokens, max(1, cfg.max_model_len - prompt_tokens)
        )
        total = prompt_tokens + max_tokens
        if total > cfg.max_model_len:
            raise errors.InvalidArgument(
                f"This model's maximum context length is {cfg.max_model_len} tokens; "
                f"the request needs {total} "
                "(prompt plus max_tokens).",
                param="max_tokens",
                error_type=errors.CONTEXT_LENGTH_EXCEEDED,
            )
        return cfg, prompt, max_tokens

    def generate(self, request: EngineRequest) -> AsyncIterator[EngineOutput]:
        cfg, prompt, max_tokens = self._validate(request)
        extra_ttft = self._inject_fault(cfg)
        if request.seed is not None:
            seed = request.seed
        elif request.temperature == 0.0:
            seed = 0  # greedy decoding does not depend on a seed
        else:
            seed = secrets.randbits(63)
        seq = SimSequence(request, prompt, seed, self._clock.now(), extra_ttft)
        seq.max_tokens = max_tokens
        sched = self._schedulers[cfg.name]
        sched.submit(seq)
        self.stats.started += 1
        return self._stream(sched, seq)

    async def _stream(self, sched: ModelScheduler, seq: SimSequence) -> AsyncIterator[EngineOutput]:
        try:
            while True:
                await seq.event.wait()
                seq.event.clear()
                tokens, seq.buffer = seq.buffer, []
                if seq.deadline_hit:
                    raise errors.DeadlineExceeded("The request's deadline passed during generation.")
                if seq.finish == "abort":
                    raise errors.Cancelled("The request was aborted.")
                out = EngineOutput(tokens, seq.prompt_tokens, seq.completion_tokens, seq.finish)
                if seq.finish is not None:
                    out.queue_s = seq.scheduled_at - seq.arrival
                    out.ttft_s = seq.first_token_at - seq.arrival
                    out.e2e_s = seq.last_token_at - seq.arrival
                    yield out
                    return
                yield out
        finally:
            if seq.finish is None:
                sched.abort(seq)
