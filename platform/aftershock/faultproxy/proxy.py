"""A proxy: its listener, its toxic chains and its live connections, with Toxiproxy's semantics for
enabling, disabling and changing addresses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
from collections import Counter
from dataclasses import dataclass

from aftershock.faultproxy import addresses, jsonbody
from aftershock.faultproxy.errors import ApiError, ToxicAlreadyExists, ToxicNotFound
from aftershock.faultproxy.link import Link
from aftershock.faultproxy.toxics import Direction, ResetPeerToxic, Toxic
from aftershock.metrics import FaultProxyMetrics

log = logging.getLogger(__name__)

_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


@dataclass(frozen=True, slots=True)
class ProxyFields:
    name: str
    listen: str
    upstream: str
    enabled: bool


def proxy_fields(body: object, defaults: ProxyFields, go_type: str = "toxiproxy.Proxy") -> ProxyFields:
    """Fields of a create/update/populate body over `defaults`; absent or null fields keep them."""
    given = jsonbody.fields(jsonbody.expect_object(body, go_type), ("name", "listen", "upstream", "enabled"))

    def text(name: str, default: str) -> str:
        return jsonbody.as_str(given[name], f"Proxy.{name}") if name in given else default

    return ProxyFields(
        name=text("name", defaults.name),
        listen=text("listen", defaults.listen),
        upstream=text("upstream", defaults.upstream),
        enabled=jsonbody.as_bool(given["enabled"], "Proxy.enabled")
        if "enabled" in given
        else defaults.enabled,
    )


class Connection:
    """A client connection and its upstream connection, joined by an upstream and a downstream link."""

    def __init__(
        self,
        proxy: Proxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self._writers = (client[1], upstream[1])
        up, down = Direction.UPSTREAM, Direction.DOWNSTREAM
        self.links = {
            up: Link(self, up, client[0], upstream[1], proxy.chain(up)),
            down: Link(self, down, upstream[0], client[1], proxy.chain(down)),
        }
        self._done = False

    def start(self) -> None:
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # drain() then waits until the kernel has the bytes, as a Go write does; toxics pace
            # what reaches the peer instead of a user-space buffer absorbing it.
            writer.transport.set_write_buffer_limits(high=0)
        if any(isinstance(t, ResetPeerToxic) for t in self.proxy.toxics()):
            self.reset_sockets()  # Toxiproxy sets SO_LINGER 0 on connect when a reset_peer is present
        for link in self.links.values():
            link.start()

    def reset_sockets(self) -> None:
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)

    def count_bytes(self, direction: Direction, *, received: int = 0, sent: int = 0) -> None:
        self.proxy.count_bytes(direction, received=received, sent=sent)

    def link_finished(self, link: Link) -> None:
        if all(lk.finished for lk in self.links.values()):
            self._finish()

    def abort(self) -> None:
        """Drop the connection now (proxy disabled, deleted or moved), as Toxiproxy closes both."""
        for writer in self._writers:
            writer.transport.abort()
        self._finish()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        for link in self.links.values():
            link.cancel()
        self.proxy.connection_closed(self)


class Proxy:
    def __init__(self, name: str, listen: str, upstream: str, metrics: FaultProxyMetrics) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self._metrics = metrics
        self._chains: dict[Direction, list[Toxic]] = {d: [] for d in Direction}
        self._connections: set[Connection] = set()
        self._server: asyncio.Server | None = None
        # Bumped on every stop, so a connection accepted before it cannot attach afterwards.
        self._generation = 0
        self._reported_types: set[str] = set()

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [t.to_json() for t in self.toxics()],
        }

    def chain(self, direction: Direction) -> list[Toxic]:
        return list(self._chains[direction])

    def toxics(self) -> list[Toxic]:
        """Upstream toxics then downstream ones, each in the order they were added."""
        return [*self._chains[Direction.UPSTREAM], *self._chains[Direction.DOWNSTREAM]]

    def find_toxic(self, name: str) -> Toxic | None:
        return next((t for t in self.toxics() if t.name == name), None)

    def get_toxic(self, name: str) -> Toxic:
        toxic = self.find_toxic(name)
        if toxic is None:
            raise ToxicNotFound()
        return toxic

    # Listening.

    async def start(self) -> None:
        """Listen (no-op when already enabled); the listen field then shows the bound address."""
        if self.enabled:
            return
        address = await addresses.resolve(self.listen)
        try:
            sock = addresses.listen_socket(address)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            # Worded as Go's net error, which clients may match: "...: bind: address already in use".
            raise ApiError(f"listen tcp {address}: bind: {reason[:1].lower()}{reason[1:]}") from None
        accept = functools.partial(self._accept, generation=self._generation)
        try:
            self._server = await asyncio.start_server(accept, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.listen = addresses.bound_address(sock)
        self._set_enabled(True)
        log.info("proxy listening", extra={"proxy": self.name, "listen": self.listen})

    def stop(self) -> None:
        """Close the listener and every open connection (no-op when already disabled)."""
        if not self.enabled:
            return
        self._set_enabled(False)
        self._generation += 1
        if self._server is not None:
            self._server.close()
            self._server = None
        for conn in list(self._connections):
            conn.abort()
        self._connections.clear()
        log.info("proxy stopped", extra={"proxy": self.name})

    async def differs(self, listen: str, upstream: str) -> bool:
        """Whether the addresses differ from ours, the listen address compared once resolved."""
        return str(await addresses.resolve(listen)) != self.listen or upstream != self.upstream

    async def update(self, fields: ProxyFields) -> None:
        if await self.differs(fields.listen, fields.upstream):
            # A new address restarts the proxy and drops its connections.
            self.stop()
            self.listen, self.upstream = fields.listen, fields.upstream
        if fields.enabled != self.enabled:
            if fields.enabled:
                await self.start()
            else:
                self.stop()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, generation: int
    ) -> None:
        self._metrics.connections_total.labels(self.name).inc()
        try:
            host, port = addresses.split_host_port(self.upstream)
            upstream = await asyncio.open_connection(host or "localhost", port)
        except (OSError, ApiError) as exc:
            log.warning(
                "upstream unreachable",
                extra={"proxy": self.name, "upstream": self.upstream, "error": str(exc)},
            )
            writer.close()
            return
        if generation != self._generation:
            # Disabled or moved while we dialled: this connection belongs to the old listener.
            writer.transport.abort()
            upstream[1].transport.abort()
            return
        conn = Connection(self, (reader, writer), upstream)
        self._connections.add(conn)
        conn.start()

    def count_bytes(self, direction: Direction, *, received: int = 0, sent: int = 0) -> None:
        labels = (str(direction), self.name, self.listen, self.upstream)
        if received:
            self._metrics.received_bytes_total.labels(*labels).inc(received)
        if sent:
            self._metrics.sent_bytes_total.labels(*labels).inc(sent)

    def connection_closed(self, conn: Connection) -> None:
        self._connections.discard(conn)

    # Toxics; all synchronous, so a change reaches every live connection at once.

    def add_toxic(self, toxic: Toxic) -> None:
        if self.find_toxic(toxic.name) is not None:
            raise ToxicAlreadyExists()
        self._chains[toxic.direction].append(toxic)
        for conn in list(self._connections):
            conn.links[toxic.direction].add_toxic(toxic)
        self._count_toxics()

    def update_toxic(self, toxic: Toxic, toxicity: float, attributes: dict[str, int]) -> None:
        toxic.toxicity = toxicity
        toxic.set_attributes(attributes)
        for conn in list(self._connections):
            conn.links[toxic.direction].update_toxic(toxic)

    def remove_toxic(self, toxic: Toxic) -> None:
        self._chains[toxic.direction].remove(toxic)
        for conn in list(self._connections):
            conn.links[toxic.direction].remove_toxic(toxic)
        self._count_toxics()

    def remove_all_toxics(self) -> None:
        for toxic in self.toxics():
            self.remove_toxic(toxic)

    # Metrics.

    def _set_enabled(self, enabled: bool) -> None:
        self.enabled = enabled
        self._metrics.proxy_enabled.labels(self.name).set(1 if enabled else 0)

    def _count_toxics(self) -> None:
        counts = Counter(t.type_name for t in self.toxics())
        self._reported_types |= counts.keys()
        for type_name in self._reported_types:
            self._metrics.toxics_active.labels(self.name, type_name).set(counts.get(type_name, 0))

    def report_metrics(self) -> None:
        """Publish this proxy's gauges (once it is in the collection)."""
        self._set_enabled(self.enabled)
        self._count_toxics()

    def forget_metrics(self) -> None:
        """Drop this proxy's gauge series once it is deleted or replaced."""
        with contextlib.suppress(KeyError):
            self._metrics.proxy_enabled.remove(self.name)
        for type_name in self._reported_types:
            with contextlib.suppress(KeyError):
                self._metrics.toxics_active.remove(self.name, type_name)
        self._reported_types.clear()
