"""A stack started apart from the drill, as staging is: run as a process, it starts a local stack
with the fault proxy on every hop, prints its addresses as one JSON line, and runs until its
standard input closes. `python -m tests.chaos.remote_stack MODELS_FILE`"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aftershock.stack import Stack, StackConfig


def main() -> None:
    stack = Stack(StackConfig(chaos=True, models_file=Path(sys.argv[1]), shutdown_grace_s=3))
    try:
        stack.start()
        assert stack.backend is not None
        where = {
            "edge": stack.edge_url,
            "toxiproxy": stack.toxiproxy_url,
            "backend_metrics": f"http://127.0.0.1:{stack.backend.metrics_port}/metrics",
        }
        print(json.dumps(where), flush=True)
        sys.stdin.read()  # until the test closes our stdin
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
