"""The misbehaving OpenAI-compatible server (aftershock.chaos.upstream) as a real process, the way a
user runs it: `python -m aftershock.chaos.upstream --port N`. Drills start it too, so it lives in
aftershock.chaos.model_servers."""

from aftershock.chaos.model_servers import UpstreamProc, start_upstream

__all__ = ["UpstreamProc", "start_upstream"]
