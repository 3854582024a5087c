"""Real servers for tests: redis-server on a free port, started and stopped by the suite.

The Debian packages are installed by scripts/setup.sh; a missing binary is a setup error, so the
fixture fails loudly instead of skipping.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aftershock.ports import free_port


@dataclass
class RedisServer:
    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is missing: run scripts/setup.sh"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def start_redis() -> RedisServer:
    server = RedisServer(free_port(), Path(tempfile.mkdtemp(prefix="aftershock-redis-")))
    server.start()
    return server


@dataclass
class PrometheusServer:
    """A real Prometheus (Debian's package) scraping the given targets every second."""

    port: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, jobs: dict[str, list[str]], rule_files: list[Path]) -> None:
        import yaml

        binary = shutil.which("prometheus")
        assert binary, "prometheus is missing: run scripts/setup.sh"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in jobs.items()
            ],
        }
        path = self.dir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        log = open(self.dir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()
                time.sleep(0.1)
        raise RuntimeError("prometheus did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.proc = None


def start_prometheus(jobs: dict[str, list[str]], rule_files: list[Path]) -> PrometheusServer:
    server = PrometheusServer(free_port(), Path(tempfile.mkdtemp(prefix="aftershock-prometheus-")))
    server.start(jobs, rule_files)
    return server
