"""A whole local stack as real processes: N inference replicas, a backend and an edge.

Used by `aftershock up`, the end-to-end tests and the benchmarks, so all three run the same thing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import yaml

from aftershock import topology
from aftershock.ports import free_port, free_port_run
from aftershock.proc import Proc
from aftershock.topology import Proxy


@dataclass(frozen=True)
class StackConfig:
    replicas: int = 2
    edge_port: int = 0
    host: str = "127.0.0.1"
    models_file: Path | None = None
    # Extra environment per service: {"inference": {...}, "backend": {...}, "edge": {...}}.
    env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Extra environment per process, over its service's: {"inference-0": {...}}.
    proc_env: dict[str, dict[str, str]] = field(default_factory=dict)
    # Where service logs go; None inherits this process's stderr.
    log_dir: Path | None = None
    shutdown_grace_s: float = 10.0
    # Put a fault proxy (Toxiproxy API) on every hop: edge->backend and backend->each replica.
    chaos: bool = False
    # Start a redis-server (Debian's) for the backend's dedupe and the edge's rate limits; with
    # chaos, behind the backend_redis and edge_redis proxies.
    redis: bool = False
    # Processes for the edge and the backend each (aftershock/workers.py); worker i of a service
    # serves metrics on its metrics_port + i.
    workers: int = 1


class Stack:
    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.inference: list[Proc] = []
        self.backend: Proc | None = None
        self.edge: Proc | None = None
        self.toxiproxy: Proc | None = None
        self.redis: Proc | None = None
        self.proxies: dict[str, Proxy] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="aftershock-stack-")
        self.registry_file = Path(self._tmp.name) / "registry.yaml"

    # -- addresses ----------------------------------------------------------------------------

    @property
    def edge_url(self) -> str:
        assert self.edge is not None
        return f"http://{self.config.host}:{self.edge.port}"

    @property
    def backend_target(self) -> str:
        assert self.backend is not None
        return f"{self.config.host}:{self.backend.port}"

    @property
    def toxiproxy_url(self) -> str:
        assert self.toxiproxy is not None
        return f"http://{self.config.host}:{self.toxiproxy.port}"

    @property
    def redis_url(self) -> str:
        """The real redis-server, not a proxy in front of it."""
        assert self.redis is not None
        return f"redis://{self.config.host}:{self.redis.port}/0"

    def procs(self) -> list[Proc]:
        """In start order: the fault proxy first, then the path from inference up to the edge."""
        return [
            *([self.toxiproxy] if self.toxiproxy else []),
            *([self.redis] if self.redis else []),
            *self.inference,
            *([self.backend] if self.backend else []),
            *([self.edge] if self.edge else []),
        ]

    # -- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, name: str, service: str, args: list[str], port: int, metrics_port: int) -> Proc:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.config.env.get(service, {})}
        env |= self.config.proc_env.get(name, {})
        log: IO[bytes] | None = None
        if self.config.log_dir is not None:
            self.config.log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self.config.log_dir / f"{name}.log", "ab")
        cmd = [
            sys.executable,
            "-m",
            "aftershock",
            service,
            "--host",
            self.config.host,
            "--port",
            str(port),
            "--metrics-port",
            str(metrics_port),
            *args,
        ]
        popen = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True)
        return Proc(name, popen, port, metrics_port, log)

    def start_inference(self, index: int, port: int | None = None) -> Proc:
        name = f"inference-{index}"
        args = ["--replica-name", name]
        if self.config.models_file is not None:
            args += ["--models-file", str(self.config.models_file)]
        proc = self._spawn(name, "inference", args, port or free_port(), free_port())
        if index < len(self.inference):
            self.inference[index] = proc
        else:
            self.inference.append(proc)
        return proc

    def _through_proxy(self, name: str, port: int) -> str:
        """The address a client should dial: the real one, or the fault proxy's in chaos mode."""
        host = self.config.host
        if not self.config.chaos:
            return f"{host}:{port}"
        proxy = Proxy(name, f"{host}:{free_port()}", f"{host}:{port}")
        self.proxies[name] = proxy
        resp = httpx.post(f"{self.toxiproxy_url}/populate", json=[proxy.as_toxiproxy()], timeout=5)
        resp.raise_for_status()
        return proxy.listen

    def write_registry(self, models: list[str]) -> None:
        replicas = [
            {"name": p.name, "address": self._through_proxy(topology.backend_inference(i), p.port)}
            for i, p in enumerate(self.inference)
        ]
        routes = [{"name": m, "replicas": [p.name for p in self.inference]} for m in models]
        self.registry_file.write_text(yaml.safe_dump({"replicas": replicas, "models": routes}))

    def start(self, models: list[str] | None = None, ready_timeout_s: float = 60.0) -> None:
        if self.config.chaos:
            self.toxiproxy = self._spawn("toxiproxy", "faultproxy", [], free_port(), free_port())
            self._wait_http(f"{self.toxiproxy_url}/version", 20.0)
        for i in range(self.config.replicas):
            self.start_inference(i)
        self.write_registry(models or self._model_names())
        backend_args = ["--registry-file", str(self.registry_file)]
        if self.config.redis:
            self.start_redis()
            assert self.redis is not None
            address = self._through_proxy(topology.BACKEND_REDIS, self.redis.port)
            backend_args += ["--redis-url", f"redis://{address}/0"]
        workers = self.config.workers
        if workers > 1:
            backend_args += ["--workers", str(workers)]
        self.backend = self._spawn("backend", "backend", backend_args, free_port(), free_port_run(workers))
        edge_args = ["--backend", self._through_proxy(topology.EDGE_BACKEND, self.backend.port)]
        if workers > 1:
            # Two connections per backend worker from each edge worker, so every one is reached.
            edge_args += ["--workers", str(workers), "--backend-channels", str(2 * workers)]
        if self.redis is not None:
            address = self._through_proxy(topology.EDGE_REDIS, self.redis.port)
            edge_args += ["--redis-url", f"redis://{address}/0"]
        self.edge = self._spawn(
            "edge",
            "edge",
            edge_args,
            self.config.edge_port or free_port(),
            free_port_run(workers),
        )
        self.wait_ready(ready_timeout_s)

    def _model_names(self) -> list[str]:
        from aftershock.inference.settings import InferenceSettings

        settings = InferenceSettings(models_file=self.config.models_file)
        return [m.name for m in settings.resolved_sim_models()]

    def _wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"{url} did not answer in {timeout_s}s")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = "not started"
        while time.monotonic() < deadline:
            for proc in self.procs():
                if not proc.alive():
                    tail = proc.log_tail()
                    raise RuntimeError(
                        f"{proc.name} exited with {proc.popen.returncode} during start-up"
                        + (f"; the end of its log:\n{tail}" if tail else "")
                    )
            try:
                resp = httpx.get(f"{self.edge_url}/readyz", timeout=1.0)
                if resp.status_code == 200:
                    return
                last = resp.text
            except httpx.HTTPError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise TimeoutError(f"stack not ready after {timeout_s}s: {last}")

    def start_redis(self) -> Proc:
        """redis-server on the same port as before (or a free one), without persistence."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it)")
        port = self.redis.port if self.redis is not None else free_port()
        # No persistence: a local stack's dedupe and rate-limit state is meant to be thrown away.
        cmd = [binary, "--port", str(port), "--bind", self.config.host, "--save", ""]
        cmd += ["--appendonly", "no", "--dir", self._tmp.name]
        popen = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        self.redis = Proc("redis", popen, port, 0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.config.host, port), timeout=0.2):
                    return self.redis
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill_inference(self, index: int) -> None:
        """A crash: SIGKILL, no draining."""
        proc = self.inference[index]
        self.kill(proc, signal.SIGKILL)
        proc.popen.wait(10)

    def stop_redis(self) -> None:
        if self.redis is not None and self.redis.alive():
            self.redis.popen.terminate()
            self.redis.popen.wait(10)

    def restart_inference(self, index: int) -> Proc:
        """Start replica `index` again on its old port (the registry and proxies still point there)."""
        old = self.inference[index]
        proc = self.start_inference(index, port=old.port)
        return proc

    def kill(self, proc: Proc, sig: int = signal.SIGKILL) -> None:
        if proc.alive():
            proc.popen.send_signal(sig)

    def stop(self) -> dict[str, int | None]:
        """SIGTERM edge, then backend, then inference (the order requests flow); SIGKILL stragglers."""
        codes: dict[str, int | None] = {}
        for proc in reversed(self.procs()):
            if proc.alive():
                proc.popen.send_signal(signal.SIGTERM)
            try:
                codes[proc.name] = proc.popen.wait(self.config.shutdown_grace_s + 5)
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                codes[proc.name] = proc.popen.wait()
            if proc.log is not None:
                proc.log.close()
        self._tmp.cleanup()
        return codes

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
