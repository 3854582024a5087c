"""deploy/healthcheck.py (the containers' HEALTHCHECK) against real HTTP and gRPC health servers."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import grpc
import pytest
from aftershock.ports import free_port
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.deploy.support import (
    GRPC_SERVICES,
    SETTINGS,
    healthcheck,
    setting_default,
)


def test_healthcheck_defaults_match_the_services() -> None:
    assert set(healthcheck.DEFAULT_PORTS) == set(SETTINGS)
    for service, port in healthcheck.DEFAULT_PORTS.items():
        assert port == setting_default(service, "port"), service
    assert healthcheck.GRPC_HEALTH_SERVICES == GRPC_SERVICES
    assert set(healthcheck.HTTP_PATHS) | set(healthcheck.GRPC_HEALTH_SERVICES) == set(SETTINGS)


def test_healthcheck_finds_the_service_and_its_address() -> None:
    hc = healthcheck
    assert (
        hc.service_from_command(["/opt/venv/bin/python", "/opt/venv/bin/aftershock", "backend"]) == "backend"
    )
    assert hc.service_from_command(["/sbin/docker-init", "--", "aftershock", "edge", "--port", "9"]) == "edge"
    assert hc.service_from_command(["python", "-m", "aftershock", "inference"]) == "inference"
    assert hc.service_from_command(["redis-server"]) is None
    assert hc.address("edge", [], {}) == ("127.0.0.1", 8000)
    assert hc.address("edge", [], {"AFTERSHOCK_EDGE_HOST": "0.0.0.0", "AFTERSHOCK_EDGE_PORT": "8080"}) == (
        "127.0.0.1",
        8080,
    )
    assert hc.address("backend", ["aftershock", "backend", "--port=1234", "--host", "::"], {}) == (
        "::1",
        1234,
    )
    assert hc.address("inference", [], {"AFTERSHOCK_INFERENCE_HOST": "10.1.2.3"}) == ("10.1.2.3", 50051)


@pytest.fixture
def http_server() -> Iterator[tuple[int, dict[str, int]]]:
    status = {"/healthz": 200, "/version": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], status
    server.shutdown()
    server.server_close()


def test_healthcheck_http(http_server: tuple[int, dict[str, int]]) -> None:
    port, status = http_server
    assert healthcheck.check("edge", "127.0.0.1", port, 2.0) is None
    assert healthcheck.check("faultproxy", "127.0.0.1", port, 2.0) is None
    status["/healthz"] = 503
    assert "503" in (healthcheck.check("edge", "127.0.0.1", port, 2.0) or "")
    assert healthcheck.check("edge", "127.0.0.1", free_port(), 1.0) is not None


def test_healthcheck_grpc() -> None:
    server = grpc.server(thread_pool=__import__("concurrent.futures").futures.ThreadPoolExecutor(2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        servicer.set(GRPC_SERVICES["backend"], health_pb2.HealthCheckResponse.SERVING)
        servicer.set(GRPC_SERVICES["inference"], health_pb2.HealthCheckResponse.NOT_SERVING)
        assert healthcheck.check("backend", "127.0.0.1", port, 2.0) is None
        assert "NOT_SERVING" in (healthcheck.check("inference", "127.0.0.1", port, 2.0) or "")
    finally:
        server.stop(None)
    assert healthcheck.check("backend", "127.0.0.1", free_port(), 1.0) is not None
