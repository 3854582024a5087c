"""The edge keeps an idle keep-alive connection open longer than clients keep one pooled.

httpx (and so the openai SDK) reuses a pooled connection for up to 5 s of idleness, uvicorn closed
one after 5 s: a request sent on a connection just as the server closed it failed before it was
sent. The edge's keep-alive now outlasts the client's, so the client side always closes first.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from aftershock.stack import Stack

from tests.stack_support import running_stack

pytestmark = pytest.mark.e2e

CLIENT_POOL_EXPIRY_S = 5.0  # httpx.Limits' keepalive_expiry default, which the openai SDK keeps
REQUEST = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: keep-alive\r\n\r\n"


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with running_stack("test_keep_alive", replicas=1) as s:
        yield s


def _exchange(sock: socket.socket) -> bytes:
    sock.sendall(REQUEST)
    got = b""
    while b"\r\n\r\n" not in got or not got.endswith(b"}"):
        chunk = sock.recv(4096)
        if not chunk:
            return got  # the server closed the connection
        got += chunk
    return got


def test_a_connection_idle_past_the_client_pool_expiry_still_serves(stack: Stack) -> None:
    url = urlsplit(stack.edge_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        assert _exchange(sock).startswith(b"HTTP/1.1 200")
        time.sleep(CLIENT_POOL_EXPIRY_S + 0.5)
        again = _exchange(sock)
    assert again.startswith(b"HTTP/1.1 200"), again
