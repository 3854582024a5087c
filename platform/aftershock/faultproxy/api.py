"""Toxiproxy's HTTP API over a ProxyCollection: same routes, JSON shapes, status codes and errors."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from aftershock.faultproxy import jsonbody
from aftershock.faultproxy.collection import ProxyCollection
from aftershock.faultproxy.errors import ApiError

log = logging.getLogger(__name__)

# The Toxiproxy release whose API this server speaks; "+aftershock" tells the two servers apart
# while staying semver-equal for clients that check the version.
TOXIPROXY_VERSION = "2.12.0+aftershock"

Handler = Callable[[Request], Awaitable[Response]]


def _json(data: object, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


def _error(exc: ApiError) -> Response:
    return _json(exc.to_json(), exc.status)


class _StopBrowsers:
    """Toxiproxy refuses browsers, so a web page cannot drive it (cross-site requests)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            agent = dict(scope["headers"]).get(b"user-agent", b"")
            if agent.startswith(b"Mozilla/"):
                await PlainTextResponse("User agent not allowed\n", 403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _body(request: Request) -> object:
    return jsonbody.decode(await request.body())


def create_app(collection: ProxyCollection) -> Starlette:
    async def proxy_index(request: Request) -> Response:
        return _json({p.name: p.to_json() for p in collection.proxies()})

    async def proxy_create(request: Request) -> Response:
        proxy = await collection.create(await _body(request))
        return _json(proxy.to_json(), 201)

    async def populate(request: Request) -> Response:
        try:
            proxies, error = await collection.populate(await _body(request))
        except ApiError as exc:
            proxies, error = [], exc
        # Toxiproxy's quirks kept: the list is null when empty, and an error still lists what was done.
        listed = [p.to_json() for p in proxies] or None
        if error is not None:
            log.warning("populate failed", extra={"error": error.message})
            return _json({**error.to_json(), "proxies": listed}, error.status)
        return _json({"proxies": listed}, 201)

    async def proxy_show(request: Request) -> Response:
        return _json(collection.get(request.path_params["proxy"]).to_json())

    async def proxy_update(request: Request) -> Response:
        name = request.path_params["proxy"]
        collection.get(name)  # 404 before the body is looked at
        proxy = await collection.update(name, await _body(request))
        return _json(proxy.to_json())

    async def proxy_delete(request: Request) -> Response:
        await collection.delete(request.path_params["proxy"])
        return Response(status_code=204)

    async def toxic_index(request: Request) -> Response:
        proxy = collection.get(request.path_params["proxy"])
        return _json([t.to_json() for t in proxy.toxics()])

    async def toxic_create(request: Request) -> Response:
        name = request.path_params["proxy"]
        collection.get(name)
        toxic = await collection.add_toxic(name, await _body(request))
        return _json(toxic.to_json())  # 200, not 201, as Toxiproxy

    async def toxic_show(request: Request) -> Response:
        proxy = collection.get(request.path_params["proxy"])
        return _json(proxy.get_toxic(request.path_params["toxic"]).to_json())

    async def toxic_update(request: Request) -> Response:
        name, toxic_name = request.path_params["proxy"], request.path_params["toxic"]
        collection.get(name).get_toxic(toxic_name)
        toxic = await collection.update_toxic(name, toxic_name, await _body(request))
        return _json(toxic.to_json())

    async def toxic_delete(request: Request) -> Response:
        await collection.delete_toxic(request.path_params["proxy"], request.path_params["toxic"])
        return Response(status_code=204)

    async def reset(request: Request) -> Response:
        await collection.reset()
        return Response(status_code=204)

    async def version(request: Request) -> Response:
        body = f'{{"version": "{TOXIPROXY_VERSION}"}}\n'  # byte for byte as Toxiproxy writes it
        return Response(body, media_type="application/json;charset=utf-8")

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        if exc.status >= 500:
            log.warning("api error", extra={"path": request.url.path, "error": exc.message})
        return _error(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        # Unknown paths and methods answer as Toxiproxy's router does.
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            return PlainTextResponse("404 page not found\n", 404)
        return Response(status_code=exc.status_code)

    proxy_path, toxic_path = "/proxies/{proxy}", "/proxies/{proxy}/toxics/{toxic}"
    routes = [
        Route("/reset", reset, methods=["POST"]),
        Route("/proxies", proxy_index, methods=["GET"]),
        Route("/proxies", proxy_create, methods=["POST"]),
        Route("/populate", populate, methods=["POST"]),
        Route(proxy_path, proxy_show, methods=["GET"]),
        Route(proxy_path, proxy_update, methods=["POST", "PATCH"]),
        Route(proxy_path, proxy_delete, methods=["DELETE"]),
        Route(proxy_path + "/toxics", toxic_index, methods=["GET"]),
        Route(proxy_path + "/toxics", toxic_create, methods=["POST"]),
        Route(toxic_path, toxic_show, methods=["GET"]),
        Route(toxic_path, toxic_update, methods=["POST", "PATCH"]),
        Route(toxic_path, toxic_delete, methods=["DELETE"]),
        Route("/version", version, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_StopBrowsers)],
        exception_handlers={ApiError: api_error, HTTPException: http_error},
    )
