"""The gRPC core experiments a service process runs with, chosen before grpc is imported.

gRPC core reads GRPC_EXPERIMENTS once, when `grpc` is first imported, so the `aftershock` command
calls `choose()` before it imports anything that imports grpc; child processes inherit the choice.
A value the operator set (even an empty one, meaning gRPC's own defaults) is left alone, as OTEL_*
variables are left to the OpenTelemetry SDK.

Why `-event_engine_client`: with gRPC's EventEngine client (on by default since grpcio 1.62) every
read on an outgoing channel completes on an EventEngine pool thread, which wakes the asyncio
poller thread, which wakes the event loop: three threads per message. Without it the poller
thread polls the channel's socket itself. The edge and the backend are both gRPC clients and relay
one message per token, so on a paced stream that hand-off was about a fifth of their CPU per token
(benchmarks/overhead.py's `grpc-event-engine` configuration measures it again after an upgrade).
The iomgr client used instead was gRPC's default before 1.62 and is still in grpcio (1.85 here);
should a release drop the experiment, gRPC logs "Unknown experiment" once and runs its default.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "GRPC_EXPERIMENTS"
DEFAULT = "-event_engine_client"


def choose() -> str:
    """Set GRPC_EXPERIMENTS to DEFAULT in this process unless the operator set it; the value in
    force. RuntimeError when grpc is already imported: the choice would silently not apply."""
    if VARIABLE not in os.environ:
        if "grpc" in sys.modules:
            raise RuntimeError(f"{VARIABLE} must be chosen before grpc is imported")
        os.environ[VARIABLE] = DEFAULT
    return os.environ[VARIABLE]
