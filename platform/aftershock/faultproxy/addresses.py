"""TCP addresses written as Toxiproxy writes them ("127.0.0.1:8474", "[::1]:80", ":0"), and listeners."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from dataclasses import dataclass

from aftershock.faultproxy.errors import ApiError

LISTEN_BACKLOG = 512


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str | None  # an IP literal; None for "all interfaces", as Go's empty host
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host or "", self.port)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; raises ApiError (500, as Go's net errors)."""
    if address.startswith("["):
        close = address.find("]")
        if close < 0:
            raise ApiError(f"address {address}: missing ']' in address")
        host, rest = address[1:close], address[close + 1 :]
        if not rest.startswith(":"):
            raise ApiError(f"address {address}: missing port in address")
        port_text = rest[1:]
    else:
        host, sep, port_text = address.rpartition(":")
        if not sep:
            raise ApiError(f"address {address}: missing port in address")
        if ":" in host:
            raise ApiError(f"address {address}: too many colons in address")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ApiError(f"address {address}: invalid port")
    return host, int(port_text)


def _ip_literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


async def resolve(address: str) -> TcpAddress:
    """The address with its host looked up (IPv4 preferred, like Go's resolver for "tcp")."""
    host, port = split_host_port(address)
    if not host:
        return TcpAddress(None, port)
    literal = _ip_literal(host)
    if literal is not None:
        return TcpAddress(literal, port)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ApiError(f"lookup {host}: {exc.strerror or exc}") from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return TcpAddress(str(infos[0][4][0]), port)


def listen_socket(address: TcpAddress) -> socket.socket:
    """A listening, non-blocking socket; no host means every interface (dual-stack when possible)."""
    candidates = [address.host] if address.host else ["::", "0.0.0.0"]
    for i, host in enumerate(candidates):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            if i + 1 < len(candidates):
                continue  # no IPv6 on this machine: take the IPv4 wildcard
            raise
        try:
            # Re-enabling a proxy listens on the same port while old connections sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "::":
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, address.port))
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except OSError:
            sock.close()
            if i + 1 < len(candidates):
                continue
            raise
        return sock
    raise AssertionError("unreachable")


def bound_address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return join_host_port(host, port)
