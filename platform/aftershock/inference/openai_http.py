"""The openai engine's HTTP client for its upstream server: one aiohttp session, every call bounded.

Why aiohttp and not httpx (used elsewhere in the project): under 32 concurrent requests httpx's
connection pool cost 2.2-2.4 ms of CPU per request here, aiohttp's client 0.11-0.17 ms, on the same
upstream (the benchmarks' minimal server); for a relay that was most of what it spent.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from aftershock import errors
from aftershock.inference.openai_errors import DEFAULT_RETRY_AFTER_S

CONNECT_TIMEOUT_S = 5.0


class UpstreamHttp:
    def __init__(self, base_url: str, api_key: str | None) -> None:
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._base = base_url.rstrip("/") + "/"
        self._session: aiohttp.ClientSession | None = None  # made in open(), on the running loop

    def open(self) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._auth,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                connector=aiohttp.TCPConnector(limit=1024),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get_json(self, path: str, timeout_s: float) -> Any:
        """GET `path` (relative to the base URL) as JSON; aiohttp's errors for a failure."""
        async with self._opened().get(self._base + path, timeout=_bound(total=timeout_s)) as resp:
            resp.raise_for_status()
            return orjson.loads(await resp.read())

    def post(
        self,
        path: str,
        body: dict[str, Any],
        headers: dict[str, str],
        *,
        total: float | None = None,
        read: float | None = None,
    ) -> Any:
        """A POST (an async context manager for its response), bounded as a whole (`total`) or per
        socket read (`read`)."""
        return self._opened().post(
            self._base + path,
            data=orjson.dumps(body),
            headers={**headers, "content-type": "application/json"},
            timeout=_bound(total=total, read=read),
        )

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise errors.Unavailable(
                "The openai engine has not started.", retry_after_s=DEFAULT_RETRY_AFTER_S
            )
        return self._session


def _bound(total: float | None = None, read: float | None = None) -> aiohttp.ClientTimeout:
    # A request's timeout replaces the session's (it is not merged): connecting stays bounded.
    return aiohttp.ClientTimeout(total=total, sock_read=read, sock_connect=CONNECT_TIMEOUT_S)
