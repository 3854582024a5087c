"""ToxiproxyClient: toxiproxy-python plus the calls its 0.1.1 release lacks."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import requests
from aftershock.faultproxy.api import TOXIPROXY_VERSION
from aftershock.faultproxy.client import ToxiproxyClient
from toxiproxy.exceptions import InvalidToxic, NotFound

from tests.faultproxy.support import Behaviour, Upstream, connect, echo, port_of, round_trip

Start = Callable[[Behaviour], Upstream]


def test_wrapper_adds_populate_toxic_update_and_version(wrapped: ToxiproxyClient, upstream: Start) -> None:
    up = upstream(echo)
    proxies = wrapped.populate(
        [
            {"name": "p", "listen": "127.0.0.1:0", "upstream": up.address},
            {"name": "q", "listen": "127.0.0.1:0", "upstream": up.address, "enabled": False},
        ]
    )
    assert [(p.name, p.enabled) for p in proxies] == [("p", True), ("q", False)]

    toxic = wrapped.add_toxic("p", "latency", attributes={"latency": 150})
    assert (toxic.name, toxic.attributes, toxic.toxicity) == (
        "latency_downstream",
        {"latency": 150, "jitter": 0},
        1,
    )
    updated = wrapped.update_toxic("p", toxic.name, toxicity=0, attributes={"jitter": 5})
    assert (updated.toxicity, updated.attributes) == (0, {"latency": 150, "jitter": 5})
    with connect(port_of(proxies[0].listen)) as sock:
        assert round_trip(sock) < 0.1  # toxicity 0: not applied

    q = wrapped.update_proxy("q", enabled=True)
    assert q.enabled is True and port_of(q.listen) != 0
    assert wrapped.server_version() == TOXIPROXY_VERSION

    # The library's own calls work on the same client.
    assert set(wrapped.get_proxy("p").toxics()) == {"latency_downstream"}
    assert wrapped.reset() is True
    assert wrapped.get_proxy("p").toxics() == {}


def test_wrapper_raises_for_errors(wrapped: ToxiproxyClient, upstream: Start) -> None:
    up = upstream(echo)
    wrapped.populate([{"name": "p", "listen": "127.0.0.1:0", "upstream": up.address}])
    with pytest.raises(NotFound):
        wrapped.update_toxic("p", "nope", toxicity=1)
    with pytest.raises(InvalidToxic):
        wrapped.add_toxic("p", "packet_loss")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(requests.HTTPError) as failed:  # a 500 the library itself lets through
            wrapped.populate([{"name": "r", "listen": taken, "upstream": up.address}])
    assert failed.value.response is not None and failed.value.response.status_code == 500
