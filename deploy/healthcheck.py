#!/usr/bin/env python3
"""aftershock-healthcheck: the container HEALTHCHECK for every Aftershock service in one image.

    aftershock-healthcheck [SERVICE] [--timeout SECONDS]

SERVICE is edge, backend, inference or faultproxy (the fault proxy). Without it, the service is read
from the container's main process (PID 1's command line: `aftershock edge ...`), else from
$AFTERSHOCK_SERVICE. The address is the service's own: `--host`/`--port` on that command line, else
AFTERSHOCK_<SERVICE>_HOST / AFTERSHOCK_<SERVICE>_PORT, else the service's default; a wildcard host
(0.0.0.0, ::) is probed on loopback.

    edge       GET /healthz                 -> 200
    faultproxy GET /version                 -> 200
    backend    grpc.health.v1 Check("aftershock.v1.Backend")   -> SERVING
    inference  grpc.health.v1 Check("aftershock.v1.Inference") -> SERVING

Exit 0 when healthy, 1 when not (Docker's convention), 2 on a usage error. Lives in deploy/, not in
the package: it is container plumbing. tests/deploy checks its defaults against the settings classes.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# The services' default ports and gRPC health service names; tests/deploy keeps them equal to
# aftershock's settings classes and service modules.
DEFAULT_PORTS = {"edge": 8000, "backend": 50061, "inference": 50051, "faultproxy": 8474}
GRPC_HEALTH_SERVICES = {"backend": "aftershock.v1.Backend", "inference": "aftershock.v1.Inference"}
HTTP_PATHS = {"edge": "/healthz", "faultproxy": "/version"}
SERVICES = tuple(DEFAULT_PORTS)
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


def main_command(cmdline_path: Path = Path("/proc/1/cmdline")) -> list[str]:
    """PID 1's argv ([] where it cannot be read, e.g. outside a container)."""
    try:
        raw = cmdline_path.read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def service_from_command(argv: Sequence[str]) -> str | None:
    """The word after `aftershock` (or `python -m aftershock`), e.g. edge; init wrappers are skipped."""
    for i, arg in enumerate(argv[:-1]):
        if os.path.basename(arg) == "aftershock" and argv[i + 1] in SERVICES:
            return argv[i + 1]
    return None


def flag(argv: Sequence[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` on a command line (the last one wins)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def address(service: str, argv: Sequence[str], env: dict[str, str]) -> tuple[str, int]:
    prefix = f"AFTERSHOCK_{service.upper()}_"
    host = flag(argv, "--host") or env.get(prefix + "HOST", "127.0.0.1")
    port = flag(argv, "--port") or env.get(prefix + "PORT") or DEFAULT_PORTS[service]
    return WILDCARDS.get(host, host), int(port)


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_http(host: str, port: int, path: str, timeout: float) -> str | None:
    """None when the endpoint answers 200, else why not."""
    url = f"http://{_hostport(host, port)}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        return f"GET {url}: HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return f"GET {url}: {exc}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


def check_grpc(host: str, port: int, service: str, timeout: float) -> str | None:
    """None when grpc.health.v1 reports SERVING for `service`, else why not."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = _hostport(host, port)
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"{target} health {service!r}: {exc.code().name} {exc.details()}"
    if resp.status != health_pb2.HealthCheckResponse.SERVING:
        return (
            f"{target} health {service!r}: {health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)}"
        )
    return None


def check(service: str, host: str, port: int, timeout: float) -> str | None:
    if service in GRPC_HEALTH_SERVICES:
        return check_grpc(host, port, GRPC_HEALTH_SERVICES[service], timeout)
    return check_http(host, port, HTTP_PATHS[service], timeout)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aftershock-healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("service", nargs="?", choices=SERVICES, help="default: from PID 1's command line")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    args = p.parse_args(argv)
    command = main_command()
    service = args.service or service_from_command(command) or os.environ.get("AFTERSHOCK_SERVICE")
    if service not in SERVICES:
        print(f"aftershock-healthcheck: cannot tell the service; name one of {', '.join(SERVICES)}")
        return 2
    # Flags on PID 1's command line only describe this service when PID 1 runs it.
    service_argv = command if service_from_command(command) == service else []
    host, port = address(service, service_argv, dict(os.environ))
    problem = check(service, host, port, args.timeout)
    if problem is not None:
        print(f"aftershock-healthcheck: {service} unhealthy: {problem}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
