"""The engine's load as the backend's router reads it (Inference.GetLoad).

An engine that knows its own queue (the simulator: running and waiting sequences, KV cache usage)
reports it through `ReportsLoad`. For one that does not (an upstream server, vLLM without a cheap
in-process view), the service counts the generations it has in flight and reports them as running.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aftershock.inference.engine import Engine, EngineOutput


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: int = 0
    waiting: int = 0
    kv_cache_usage: float = 0.0


@runtime_checkable
class ReportsLoad(Protocol):
    def load(self) -> EngineLoad: ...


class LoadTracker:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reports = isinstance(engine, ReportsLoad)
        self.active = 0

    def track(self, outputs: AsyncIterator[EngineOutput]) -> AsyncIterator[EngineOutput]:
        # An engine that reports its own load needs no wrapper (and its per-message cost).
        return outputs if self._reports else self._counted(outputs)

    async def _counted(self, outputs: AsyncIterator[EngineOutput]) -> AsyncIterator[EngineOutput]:
        self.active += 1
        try:
            async for out in outputs:
                yield out
        finally:
            self.active -= 1

    def load(self) -> EngineLoad:
        if isinstance(self._engine, ReportsLoad):
            return self._engine.load()
        return EngineLoad(running=self.active)
