"""The edge's view of the backend: one channel, a short-lived model cache and readiness."""

from __future__ import annotations

import itertools
import time

import grpc

from aftershock.rpc.client import insecure_channel
from aftershock.rpc.tracing import outgoing_metadata
from aftershock.v1 import backend_pb2_grpc
from aftershock.v1 import generation_pb2 as pb


class BackendClient:
    def __init__(self, target: str, models_cache_s: float, channels: int = 1) -> None:
        # Each channel its own connection (a local subchannel pool): a backend running several
        # workers on one port (SO_REUSEPORT) spreads connections, not calls, among them.
        options = (("grpc.use_local_subchannel_pool", 1),) if channels > 1 else ()
        self.channels = [insecure_channel(target, options=options) for _ in range(channels)]
        self._stubs = itertools.cycle([backend_pb2_grpc.BackendStub(c) for c in self.channels])
        self._cache_s = models_cache_s
        self._models: list[pb.ModelInfo] = []
        self._fetched_at = -1e9
        self.known_models: frozenset[str] = frozenset()

    @property
    def stub(self) -> backend_pb2_grpc.BackendAsyncStub:
        """The next connection's stub, in turn."""
        return next(self._stubs)

    async def list_models(self, within_s: float, *, fresh: bool = False) -> list[pb.ModelInfo]:
        now = time.monotonic()
        if fresh or now - self._fetched_at > self._cache_s:
            # A user's GET /v1/models is traced through; a probe (no span at the edge) is not.
            metadata = outgoing_metadata()
            resp = await self.stub.ListModels(pb.ListModelsRequest(), timeout=within_s, metadata=metadata)
            self._models = list(resp.models)
            self.known_models = frozenset(m.name for m in self._models)
            self._fetched_at = now
        return self._models

    async def readiness(self, within_s: float) -> tuple[bool, str]:
        """Ready when the backend answers and every model has at least one reachable replica."""
        try:
            # Never cached: a probe must see a replica loss as soon as the backend does.
            models = await self.list_models(within_s, fresh=True)
        except grpc.aio.AioRpcError as exc:
            return False, f"backend unreachable: {exc.code().name}"
        if not models:
            return False, "no models are registered"
        down = [m.name for m in models if m.ready_replicas == 0]
        if down:
            return False, "no reachable replica for: " + ", ".join(sorted(down))
        return True, "ready"

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()
