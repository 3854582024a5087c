"""The misbehaving model server (aftershock.chaos.upstream) as a real process, the way a user runs it
(`python -m aftershock.chaos.upstream --port N`), and its control API: for drills and tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from aftershock.ports import free_port


@dataclass
class UpstreamProc:
    port: int
    popen: subprocess.Popen[bytes]
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fault(self, kind: str, **params: Any) -> None:
        httpx.put(f"{self.url}/control/fault", json={"kind": kind, **params}, timeout=5).raise_for_status()

    def clear(self) -> None:
        httpx.delete(f"{self.url}/control/fault", timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.url}/control/stats", timeout=5)
        resp.raise_for_status()
        return dict(resp.json())

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self.log is not None:
            self.log.close()


def start_upstream(models: list[str], *, itl_s: float = 0.01, log: Path | None = None) -> UpstreamProc:
    port = free_port()
    cmd = [sys.executable, "-m", "aftershock.chaos.upstream", "--port", str(port), "--itl-s", str(itl_s)]
    out = open(log, "ab") if log is not None else None  # closed by stop()
    sink = out if out is not None else subprocess.DEVNULL
    popen = subprocess.Popen([*cmd, "--models", *models], stdout=sink, stderr=sink, env=dict(os.environ))
    proc = UpstreamProc(port, popen, out)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the upstream server exited with {popen.returncode}")
        try:
            if httpx.get(f"{proc.url}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.stop()
    raise TimeoutError("the upstream server did not start")


def engine_env(servers: list[UpstreamProc], stream_idle_timeout_s: float) -> dict[str, dict[str, str]]:
    """Per process (StackConfig.proc_env): replica i runs the openai engine in front of server i."""
    return {
        f"inference-{i}": {
            "AFTERSHOCK_INFERENCE_ENGINE": "openai",
            "AFTERSHOCK_INFERENCE_OPENAI_BASE_URL": f"{server.url}/v1",
            "AFTERSHOCK_INFERENCE_OPENAI_STREAM_IDLE_TIMEOUT_S": str(stream_idle_timeout_s),
            # Its text is a function of (model, prompt, seed): a seeded stream may resume elsewhere.
            "AFTERSHOCK_INFERENCE_OPENAI_REPRODUCIBLE": "true",
        }
        for i, server in enumerate(servers)
    }
