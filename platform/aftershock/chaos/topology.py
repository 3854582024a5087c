"""The proxy names the drills use: the stack's own (`aftershock.topology`), re-exported here for
code that still imports them from chaos (tests/deploy until it moves to `aftershock.topology`)."""

from aftershock.topology import BACKEND_REDIS, EDGE_BACKEND, EDGE_REDIS, Proxy, backend_inference

__all__ = ["BACKEND_REDIS", "EDGE_BACKEND", "EDGE_REDIS", "Proxy", "backend_inference"]
