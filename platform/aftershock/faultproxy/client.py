"""toxiproxy-python, plus what its 0.1.1 release lacks, for drills that drive the real Toxiproxy
(staging) or ours (local, CI) through one client.

Why a wrapper at all; 0.1.1 against the Toxiproxy 2.x API:
- it cannot update a toxic (POST /proxies/{p}/toxics/{t}), so a drill could not ramp latency or
  toxicity without deleting and re-adding the toxic;
- its populate() is client-side (a GET of every proxy, then DELETE + POST per changed proxy): racy,
  ignores the server's rules, and returns only the proxies it created; the server has POST /populate;
- add_toxic() discards the created toxic, and version() returns raw bytes (JSON since Toxiproxy 2.7);
- a 500 (e.g. listen address in use) is not raised, so create() then fails on a KeyError.
Everything else (create, proxies, get_proxy, Proxy.disable/enable/down/toxics, destroy, reset) is the
library's own. The library keeps host and port on its class-level APIConsumer, so one server per
process; and its own calls carry no timeout (the methods added here do).
"""

from __future__ import annotations

import json
from typing import Any

from requests import Response
from toxiproxy import Proxy, Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.toxic import Toxic


def _checked(response: Response) -> Response:
    # APIConsumer already raised the library's exceptions for 400/404/409; this covers the rest.
    response.raise_for_status()
    return response


class ToxiproxyClient(Toxiproxy):  # type: ignore[misc]  # toxiproxy-python has no type hints
    def __init__(self, host: str = "127.0.0.1", port: int = 8474, timeout_s: float = 10.0) -> None:
        self.update_api_consumer(host, port)
        self.timeout_s = timeout_s

    def populate(self, proxies: list[dict[str, Any]]) -> list[Proxy]:
        """Create or replace proxies with the server's POST /populate; returns all of them."""
        response = _checked(APIConsumer.post("/populate", json=proxies, timeout=self.timeout_s))
        return [Proxy(**fields) for fields in response.json()["proxies"] or []]

    def update_proxy(self, name: str, **fields: Any) -> Proxy:
        """Change listen, upstream or enabled. POST, which every 2.x server takes (PATCH from 2.6)."""
        response = _checked(APIConsumer.post(f"/proxies/{name}", json=fields, timeout=self.timeout_s))
        return Proxy(**response.json())

    def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        attributes: dict[str, int] | None = None,
    ) -> Toxic:
        body = {"type": type, "stream": stream, "toxicity": toxicity, "attributes": attributes or {}}
        if name is not None:
            body["name"] = name
        response = _checked(APIConsumer.post(f"/proxies/{proxy}/toxics", json=body, timeout=self.timeout_s))
        return Toxic(**response.json())

    def update_toxic(
        self,
        proxy: str,
        toxic: str,
        *,
        toxicity: float | None = None,
        attributes: dict[str, int] | None = None,
    ) -> Toxic:
        """Change a live toxic's attributes (those given) and/or toxicity; open connections follow."""
        body: dict[str, Any] = {}
        if toxicity is not None:
            body["toxicity"] = toxicity
        if attributes is not None:
            body["attributes"] = attributes
        url = f"/proxies/{proxy}/toxics/{toxic}"
        return Toxic(**_checked(APIConsumer.post(url, json=body, timeout=self.timeout_s)).json())

    def server_version(self) -> str:
        """The server's version: JSON since Toxiproxy 2.7, plain text before."""
        text: str = _checked(APIConsumer.get("/version", timeout=self.timeout_s)).text.strip()
        try:
            version = json.loads(text)["version"]
        except (ValueError, KeyError, TypeError):
            return text
        return str(version)
