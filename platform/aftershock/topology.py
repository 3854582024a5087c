"""Names of the Toxiproxy proxies on every hop of a stack.

They belong to the stack (`aftershock.stack` creates them for `aftershock up --chaos`); the drills
in chaos/ and the staging stack in deploy/ (the real Toxiproxy) use the same names, so one drill
drives either."""

from __future__ import annotations

from dataclasses import dataclass

EDGE_BACKEND = "edge_backend"
BACKEND_REDIS = "backend_redis"
EDGE_REDIS = "edge_redis"


def backend_inference(index: int) -> str:
    """The proxy in front of inference replica `index` (inference-<index>)."""
    return f"backend_inference_{index}"


@dataclass(frozen=True)
class Proxy:
    name: str
    listen: str  # host:port the client side connects to
    upstream: str  # host:port of the real service

    def as_toxiproxy(self) -> dict[str, object]:
        """The JSON object Toxiproxy's POST /populate and POST /proxies take."""
        return {"name": self.name, "listen": self.listen, "upstream": self.upstream, "enabled": True}
