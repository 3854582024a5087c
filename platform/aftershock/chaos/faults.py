"""Applying and rolling back a drill's faults: toxics and proxy outages through the Toxiproxy API
(the real server in staging, ours locally), replica crashes and Redis outages on a local stack, and
model server faults through each model server's control API."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aftershock.chaos.spec import Fault
from aftershock.faultproxy.client import ToxiproxyClient

log = logging.getLogger(__name__)


class LocalStack(Protocol):
    """What process faults need from aftershock.stack.Stack."""

    def kill_inference(self, index: int) -> None: ...
    def restart_inference(self, index: int) -> object: ...
    def stop_redis(self) -> None: ...
    def start_redis(self) -> object: ...


class ModelServer(Protocol):
    """What model_server faults need from a model server's control API (aftershock.chaos.upstream)."""

    def fault(self, kind: str, **params: Any) -> None: ...
    def clear(self) -> None: ...


@dataclass
class FaultInjector:
    toxiproxy_url: str
    stack: LocalStack | None = None
    # The model server behind replica i, for model_server faults.
    model_servers: Sequence[ModelServer] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        parts = urlsplit(self.toxiproxy_url)
        self._client = ToxiproxyClient(parts.hostname or "127.0.0.1", parts.port or 8474)

    def apply(self, fault: Fault) -> None:
        log.warning("fault on", extra={"fault": fault.name, "kind": fault.kind})
        if fault.kind == "toxic":
            assert fault.proxy is not None and fault.toxic is not None
            t = fault.toxic
            self._client.add_toxic(
                fault.proxy,
                t.type,
                stream=t.stream,
                name=fault.name,
                toxicity=t.toxicity,
                attributes=t.attributes,
            )
        elif fault.kind == "proxy_down":
            assert fault.proxy is not None
            self._client.update_proxy(fault.proxy, enabled=False)
        elif fault.kind == "kill_replica":
            assert fault.replica is not None
            self._local().kill_inference(fault.replica)
        elif fault.kind == "model_server":
            assert fault.model_server is not None
            params = fault.model_server.model_dump(exclude_none=True)
            self._model_server(fault).fault(params.pop("kind"), **params)
        else:
            self._local().stop_redis()

    def rollback(self, fault: Fault) -> None:
        log.warning("fault off", extra={"fault": fault.name, "kind": fault.kind})
        if fault.kind == "toxic":
            assert fault.proxy is not None
            proxy = self._client.get_proxy(fault.proxy)
            if proxy is not None and fault.name in proxy.toxics():
                proxy.destroy_toxic(fault.name)
        elif fault.kind == "proxy_down":
            assert fault.proxy is not None
            self._client.update_proxy(fault.proxy, enabled=True)
        elif fault.kind == "kill_replica":
            assert fault.replica is not None
            self._local().restart_inference(fault.replica)
        elif fault.kind == "model_server":
            self._model_server(fault).clear()
        else:
            self._local().start_redis()

    def reset(self) -> None:
        """Toxiproxy's POST /reset: every proxy enabled, every toxic gone. Always run at the end."""
        self._client.reset()

    def _local(self) -> LocalStack:
        if self.stack is None:
            raise RuntimeError("process faults (kill_replica, stop_redis) need a local stack")
        return self.stack

    def _model_server(self, fault: Fault) -> ModelServer:
        assert fault.replica is not None
        if fault.replica >= len(self.model_servers):
            raise RuntimeError(f"fault {fault.name!r}: no model server behind replica {fault.replica}")
        return self.model_servers[fault.replica]
