"""The local stack (aftershock/stack.py): a service that dies while starting says why."""

from __future__ import annotations

import socket

import pytest
from aftershock.stack import Stack, StackConfig

from tests.conftest import ARTIFACTS

pytestmark = pytest.mark.e2e


def test_a_service_dying_at_start_up_is_reported_with_the_end_of_its_log() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        log_dir = ARTIFACTS / "stack-edge-port-taken"
        config = StackConfig(replicas=1, edge_port=port, log_dir=log_dir, shutdown_grace_s=2)
        stack = Stack(config)
        try:
            with pytest.raises(RuntimeError) as raised:
                stack.start(ready_timeout_s=30)
        finally:
            stack.stop()
    message = str(raised.value)
    # uvicorn exits 3 when it cannot bind.
    assert message.startswith("edge exited with 3 during start-up; the end of its log:"), message
    assert "address already in use" in message.lower()
