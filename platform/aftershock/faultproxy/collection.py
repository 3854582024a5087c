"""All proxies of a server, and the API's operations on them, in Toxiproxy's order of checks."""

from __future__ import annotations

import asyncio
import logging

from aftershock.faultproxy.errors import (
    ApiError,
    BadRequestBody,
    MissingField,
    ProxyAlreadyExists,
    ProxyNotFound,
    ToxicAlreadyExists,
)
from aftershock.faultproxy.jsonbody import json_kind
from aftershock.faultproxy.proxy import Proxy, ProxyFields, proxy_fields
from aftershock.faultproxy.toxics import Toxic, checked_update, new_toxic
from aftershock.metrics import FaultProxyMetrics

log = logging.getLogger(__name__)

_NEW = ProxyFields(name="", listen="", upstream="", enabled=True)


class ProxyCollection:
    def __init__(self, metrics: FaultProxyMetrics) -> None:
        self._metrics = metrics
        self._proxies: dict[str, Proxy] = {}
        # Proxy changes await (address lookup, listening); one at a time keeps them whole.
        self._lock = asyncio.Lock()

    def proxies(self) -> list[Proxy]:
        return [self._proxies[name] for name in sorted(self._proxies)]

    def get(self, name: str) -> Proxy:
        proxy = self._proxies.get(name)
        if proxy is None:
            raise ProxyNotFound()
        return proxy

    async def create(self, body: object) -> Proxy:
        fields = proxy_fields(body, _NEW)
        if not fields.name:
            raise MissingField("name")
        if not fields.upstream:
            raise MissingField("upstream")
        async with self._lock:
            if fields.name in self._proxies:
                raise ProxyAlreadyExists()
            proxy = Proxy(fields.name, fields.listen, fields.upstream, self._metrics)
            if fields.enabled:
                await proxy.start()
            self._proxies[proxy.name] = proxy
            proxy.report_metrics()
            return proxy

    async def populate(self, body: object) -> tuple[list[Proxy], ApiError | None]:
        """Create or replace each proxy of a list; a proxy whose listen and upstream addresses are
        unchanged is left alone (toxics, connections and enabled state included).

        Returns the proxies handled so far and the error that stopped it, as Toxiproxy answers both.
        """
        if body is None:
            body = []
        if not isinstance(body, list):
            kind = json_kind(body)
            raise BadRequestBody(f"json: cannot unmarshal {kind} into Go value of type []toxiproxy.Proxy")
        wanted = [proxy_fields(item, _NEW) for item in body]
        # Every entry is checked before any proxy is touched.
        for i, fields in enumerate(wanted, start=1):
            if not fields.name:
                raise MissingField(f"name at proxy {i}")
            if not fields.upstream:
                raise MissingField(f"upstream at proxy {i}")
        done: list[Proxy] = []
        async with self._lock:
            for fields in wanted:
                try:
                    done.append(await self._add_or_replace(fields))
                except ApiError as exc:
                    return done, exc
        return done, None

    async def _add_or_replace(self, fields: ProxyFields) -> Proxy:
        existing = self._proxies.get(fields.name)
        if existing is not None:
            if not await existing.differs(fields.listen, fields.upstream):
                return existing
            existing.stop()
        proxy = Proxy(fields.name, fields.listen, fields.upstream, self._metrics)
        if fields.enabled:
            await proxy.start()  # on failure the old proxy stays, stopped, as in Toxiproxy
        if existing is not None:
            existing.forget_metrics()
        self._proxies[proxy.name] = proxy
        proxy.report_metrics()
        return proxy

    async def update(self, name: str, body: object) -> Proxy:
        async with self._lock:
            proxy = self.get(name)
            current = ProxyFields(proxy.name, proxy.listen, proxy.upstream, proxy.enabled)
            await proxy.update(proxy_fields(body, current))
            return proxy

    async def delete(self, name: str) -> None:
        async with self._lock:
            proxy = self.get(name)
            proxy.stop()
            del self._proxies[name]
            proxy.forget_metrics()

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        async with self._lock:
            for proxy in self.proxies():
                await proxy.start()
                proxy.remove_all_toxics()

    async def add_toxic(self, proxy_name: str, body: object) -> Toxic:
        async with self._lock:
            proxy = self.get(proxy_name)
            toxic, raw_attributes = new_toxic(body)
            if proxy.find_toxic(toxic.name) is not None:
                raise ToxicAlreadyExists()
            toxic.set_attributes(toxic.checked_attributes(raw_attributes))
            proxy.add_toxic(toxic)
            return toxic

    async def update_toxic(self, proxy_name: str, toxic_name: str, body: object) -> Toxic:
        async with self._lock:
            proxy = self.get(proxy_name)
            toxic = proxy.get_toxic(toxic_name)
            toxicity, attributes = checked_update(toxic, body)
            proxy.update_toxic(toxic, toxicity, attributes)
            return toxic

    async def delete_toxic(self, proxy_name: str, toxic_name: str) -> None:
        async with self._lock:
            proxy = self.get(proxy_name)
            proxy.remove_toxic(proxy.get_toxic(toxic_name))

    async def close(self) -> None:
        """Stop every proxy (server shutdown)."""
        async with self._lock:
            for proxy in self._proxies.values():
                proxy.stop()
