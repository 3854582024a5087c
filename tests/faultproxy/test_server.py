"""Running the fault proxy: main() as a real process (flags over environment, -config file, SIGTERM),
serve() until cancelled, and the settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aftershock.faultproxy.server import main, serve
from aftershock.faultproxy.settings import FaultProxySettings
from aftershock.ports import free_port

from tests.faultproxy.support import Behaviour, Upstream, connect, echo, round_trip
from tests.polling import wait_for
from tests.scrape import scrape

Start = Callable[[Behaviour], Upstream]
COMMAND = [sys.executable, "-m", "aftershock.faultproxy"]


def answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/version", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_main_loads_config_serves_and_stops_on_sigterm(tmp_path: Path, upstream: Start) -> None:
    up = upstream(echo)
    listen, api_port, metrics_port = free_port(), free_port(), free_port()
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps([{"name": "cfg", "listen": f"127.0.0.1:{listen}", "upstream": up.address}]))
    # The config comes from the environment; the --port flag wins over the environment's port.
    env = {**os.environ, "AFTERSHOCK_FAULTPROXY_CONFIG": str(config), "AFTERSHOCK_FAULTPROXY_PORT": "1"}
    args = ["--port", str(api_port), "--metrics-port", str(metrics_port)]
    proc = subprocess.Popen([*COMMAND, *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: answers(api_port) or proc.poll() is not None, within_s=15, every_s=0.005)
        proxies = httpx.get(f"http://127.0.0.1:{api_port}/proxies").json()
        assert proxies["cfg"]["listen"] == f"127.0.0.1:{listen}" and proxies["cfg"]["enabled"] is True
        with connect(listen) as sock:
            assert round_trip(sock) < 0.5
        assert scrape(metrics_port)[("aftershock_faultproxy_proxy_enabled", (("proxy", "cfg"),))] == 1

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate(timeout=5)
    for port in (api_port, listen):
        with pytest.raises(ConnectionRefusedError):
            connect(port)
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert all(line["service"] == "faultproxy" for line in logged)
    assert "fault proxy stopping" in [line["msg"] for line in logged]


def test_main_exits_1_when_the_api_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([*COMMAND, "--port", str(port)], capture_output=True, text=True, timeout=15)
    assert done.returncode == 1
    assert "fault proxy cannot start" in done.stderr


def test_main_rejects_invalid_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "70000"]) == 2
    assert "invalid settings" in capsys.readouterr().err


def test_settings_defaults_and_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HOST", "PORT", "METRICS_PORT", "CONFIG"):
        monkeypatch.delenv(f"AFTERSHOCK_FAULTPROXY_{name}", raising=False)
    defaults = FaultProxySettings()
    assert (defaults.host, defaults.port, defaults.metrics_port, defaults.config) == (
        "127.0.0.1",
        8474,
        None,
        None,
    )

    monkeypatch.setenv("AFTERSHOCK_FAULTPROXY_HOST", "127.0.0.2")
    monkeypatch.setenv("AFTERSHOCK_FAULTPROXY_PORT", "18474")
    monkeypatch.setenv("AFTERSHOCK_FAULTPROXY_METRICS_PORT", "0")
    monkeypatch.setenv("AFTERSHOCK_FAULTPROXY_CONFIG", str(tmp_path / "c.json"))
    s = FaultProxySettings()
    assert (s.host, s.port, s.metrics_port, s.config) == ("127.0.0.2", 18474, 0, tmp_path / "c.json")


async def test_serve_runs_until_cancelled(upstream: Start) -> None:
    port = free_port()
    task = asyncio.create_task(serve(FaultProxySettings(port=port)))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        for _ in range(200):
            try:
                if (await client.get("/version")).status_code == 200:
                    break
            except httpx.TransportError:
                await asyncio.sleep(0.01)
        r = await client.post(
            "/proxies", json={"name": "s", "listen": "127.0.0.1:0", "upstream": upstream(echo).address}
        )
        listen = int(r.json()["listen"].rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await reader.read() == b""  # the open connection was closed with the server
    writer.close()
    for closed in (port, listen):
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", closed)


def test_the_command_is_aftershock_faultproxy_and_toxiproxy_is_a_deprecated_alias() -> None:
    for name in ("faultproxy", "toxiproxy"):
        cmd = [sys.executable, "-m", "aftershock", name, "--help"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "usage: aftershock faultproxy" in done.stdout, done
        assert ("deprecated" in done.stderr) == (name == "toxiproxy"), done.stderr
