"""The test suite. Imported before any conftest or test module, so it chooses the gRPC core
experiments before anything imports grpc: the in-process servers and channels then run with the
ones the services run with (the `aftershock` command chooses them the same way)."""

import os

from aftershock import grpc_experiments

CALLER_VALUE = os.environ.get(grpc_experiments.VARIABLE)  # what the caller set, if anything
grpc_experiments.choose()
