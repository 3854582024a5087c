"""Running the fault proxy: the HTTP API under uvicorn, the proxies, and an optional /metrics port.

`serve(settings)` runs until cancelled; `main(argv)` is the `aftershock faultproxy` command (flags,
logging, uvloop, clean stop on SIGTERM/SIGINT). `FaultProxyServer` is the same thing as an object
with start/stop, for embedding (tests run it in-process on port 0).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from wsgiref.simple_server import WSGIServer

import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from aftershock.faultproxy import addresses, jsonbody
from aftershock.faultproxy.api import create_app
from aftershock.faultproxy.collection import ProxyCollection
from aftershock.faultproxy.errors import ApiError
from aftershock.faultproxy.settings import FaultProxySettings
from aftershock.metrics import FaultProxyMetrics, new_registry

log = logging.getLogger(__name__)


class _Uvicorn(uvicorn.Server):
    """Signals are ours to handle (main() or the embedding program), not uvicorn's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class FaultProxyServer:
    def __init__(self, settings: FaultProxySettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry if registry is not None else new_registry()
        self.metrics = FaultProxyMetrics(self.registry)
        self.collection = ProxyCollection(self.metrics)
        self.api_port = 0  # bound ports, known after start()
        self.metrics_port = 0
        self._uvicorn: _Uvicorn | None = None
        self._serving: asyncio.Task[None] | None = None
        self._metrics_http: WSGIServer | None = None

    @property
    def url(self) -> str:
        return f"http://{addresses.join_host_port(self.settings.host, self.api_port)}"

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # nothing half-started is left listening
            raise

    async def _start(self) -> None:
        settings = self.settings
        if settings.config is not None:
            await self.populate_file(settings.config)
        # Bound here rather than by uvicorn so that a busy port raises (not sys.exit) and port 0 works.
        sock = addresses.listen_socket(await addresses.resolve(f"{settings.host}:{settings.port}"))
        self.api_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.collection),
            loop="none",
            http="httptools",
            lifespan="off",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_s)),
        )
        self._uvicorn = _Uvicorn(config)
        self._serving = asyncio.get_running_loop().create_task(self._uvicorn.serve(sockets=[sock]))
        while not self._uvicorn.started:
            if self._serving.done():
                await self._serving  # raises what stopped it
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.005)
        if settings.metrics_port:
            self._metrics_http, _ = start_http_server(settings.metrics_port, settings.host, self.registry)
            self.metrics_port = self._metrics_http.server_port
        log.info(
            "fault proxy serving",
            extra={"api": self.url, "metrics_port": self.metrics_port},
        )

    async def populate_file(self, path: Path) -> None:
        """Create the proxies listed in a Toxiproxy -config file; failures are logged, as there."""
        try:
            body = jsonbody.decode(await asyncio.to_thread(path.read_bytes))
            proxies, error = await self.collection.populate(body)
        except (OSError, ApiError) as exc:
            log.error("cannot populate proxies from config", extra={"config": str(path), "error": str(exc)})
            return
        if error is not None:
            extra = {"config": str(path), "error": error.message}
            log.error("cannot populate proxies from config", extra=extra)
        log.info("populated proxies from config", extra={"config": str(path), "proxies": len(proxies)})

    async def stop(self) -> None:
        if self._uvicorn is not None and self._serving is not None:
            self._uvicorn.should_exit = True
            try:
                await self._serving
            except Exception:
                log.exception("the API server failed")
            self._uvicorn = self._serving = None
        await self.collection.close()
        if self._metrics_http is not None:
            metrics_http, self._metrics_http = self._metrics_http, None
            # shutdown() waits for the serving thread's poll loop (up to 0.5 s): not on the loop.
            await asyncio.to_thread(metrics_http.shutdown)
            metrics_http.server_close()

    async def __aenter__(self) -> FaultProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(settings: FaultProxySettings) -> None:
    """Run the fault proxy until cancelled."""
    async with FaultProxyServer(settings):
        await asyncio.get_running_loop().create_future()


async def _run_until_signalled(settings: FaultProxySettings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with FaultProxyServer(settings):
        await stop.wait()
        log.info("fault proxy stopping")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aftershock faultproxy", description="Fault proxy serving Toxiproxy's HTTP API."
    )
    p.add_argument("--host", help="address of the HTTP API (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port of the HTTP API (default 8474)")
    p.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus /metrics port (0: off)")
    p.add_argument(
        "--config", type=Path, help="JSON list of proxies to create at start (Toxiproxy's -config)"
    )
    p.add_argument(
        "--export-api",
        dest="export_api",
        help="a real Toxiproxy's API URL: serve only /metrics with its toxics and enabled state",
    )
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING, ...")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = FaultProxySettings(**overrides)
    except ValidationError as exc:
        print(f"aftershock faultproxy: invalid settings\n{exc}", file=sys.stderr)
        return 2

    from aftershock import logs

    logs.configure("faultproxy", settings.log_level)
    if settings.export_api is not None:
        if not settings.metrics_port:
            print("aftershock faultproxy: --export-api needs --metrics-port", file=sys.stderr)
            return 2
        from aftershock.faultproxy import export

        return export.run(settings.export_api, settings.host, settings.metrics_port)
    try:
        try:
            import uvloop
        except ImportError:  # not built for every platform; asyncio's own loop works too
            asyncio.run(_run_until_signalled(settings))
        else:
            uvloop.run(_run_until_signalled(settings))
    except (OSError, ApiError) as exc:
        log.error("fault proxy cannot start", extra={"error": str(exc)})
        return 1
    return 0
