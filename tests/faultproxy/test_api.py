"""The HTTP API: routes, JSON shapes, status codes and error bodies, driven through toxiproxy-python
(as drills do) and plain HTTP."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import httpx
import pytest
from aftershock.faultproxy.api import TOXIPROXY_VERSION
from toxiproxy import Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from tests.faultproxy.support import Behaviour, Upstream, connect, echo, port_of, round_trip, send_then

Start = Callable[[Behaviour], Upstream]


def create(api: httpx.Client, name: str, up: Upstream, **extra: object) -> dict[str, object]:
    r = api.post("/proxies", json={"name": name, "listen": "127.0.0.1:0", "upstream": up.address, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


def listen_port(proxy: dict[str, object]) -> int:
    return port_of(str(proxy["listen"]))


def test_version(tp: Toxiproxy, api: httpx.Client) -> None:
    assert json.loads(tp.version()) == {"version": TOXIPROXY_VERSION}
    r = api.get("/version")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.text == f'{{"version": "{TOXIPROXY_VERSION}"}}\n'


def test_proxy_lifecycle_through_toxiproxy_python(tp: Toxiproxy, api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    proxy = tp.create(upstream=up.address, name="svc")
    assert proxy.enabled is True
    # Port 0 is replaced by the port actually bound.
    assert proxy.listen.startswith("127.0.0.1:") and port_of(proxy.listen) != 0
    with connect(port_of(proxy.listen)) as sock:
        assert round_trip(sock, b"through the proxy") < 1

    expected = {"name": "svc", "listen": proxy.listen, "upstream": up.address, "enabled": True, "toxics": []}
    assert api.get("/proxies").json() == {"svc": expected}
    assert api.get("/proxies/svc").json() == expected
    assert set(tp.proxies()) == {"svc"}
    assert tp.get_proxy("svc").upstream == up.address

    assert proxy.destroy() is True
    assert tp.get_proxy("svc") is None
    assert api.get("/proxies").json() == {}
    with pytest.raises(ConnectionRefusedError):
        connect(port_of(proxy.listen))


def test_toxiproxy_python_client_side_populate_works_too(tp: Toxiproxy, upstream: Start) -> None:
    up = upstream(echo)
    created = tp.populate([{"name": "lib", "listen": "127.0.0.1:0", "upstream": up.address}])
    assert [(p.name, p.enabled, p.upstream) for p in created] == [("lib", True, up.address)]
    with connect(port_of(tp.get_proxy("lib").listen)) as sock:
        assert round_trip(sock) < 1


def test_proxy_created_disabled_does_not_listen(api: httpx.Client, upstream: Start) -> None:
    proxy = create(api, "off", upstream(echo), enabled=False)
    assert proxy["enabled"] is False
    assert proxy["listen"] == "127.0.0.1:0"  # not bound yet, so shown as given


def test_toxics_through_toxiproxy_python(tp: Toxiproxy, api: httpx.Client, upstream: Start) -> None:
    proxy = tp.create(upstream=upstream(echo).address, name="svc")
    proxy.add_toxic(type="latency", attributes={"latency": 10})
    proxy.add_toxic(type="bandwidth", stream="upstream", name="bw", toxicity=0.5, attributes={"rate": 1000})

    toxics = proxy.toxics()
    assert set(toxics) == {"latency_downstream", "bw"}
    assert toxics["latency_downstream"].attributes == {"latency": 10, "jitter": 0}
    assert toxics["bw"].stream == "upstream" and toxics["bw"].toxicity == 0.5
    # Upstream toxics are listed first, then downstream ones, each in the order added.
    assert [t["name"] for t in api.get("/proxies/svc/toxics").json()] == ["bw", "latency_downstream"]
    assert api.get("/proxies/svc/toxics/bw").json() == {
        "attributes": {"rate": 1000},
        "name": "bw",
        "type": "bandwidth",
        "stream": "upstream",
        "toxicity": 0.5,
    }
    assert api.get("/proxies/svc").json()["toxics"] == api.get("/proxies/svc/toxics").json()

    with pytest.raises(ProxyExists):  # the library maps every 409 to ProxyExists
        proxy.add_toxic(type="latency")
    with pytest.raises(InvalidToxic):
        proxy.add_toxic(type="packet_loss")
    assert proxy.destroy_toxic("bw") is True
    with pytest.raises(NotFound):
        proxy.destroy_toxic("bw")
    assert list(proxy.toxics()) == ["latency_downstream"]


def test_every_toxic_type_lists_all_its_attributes(api: httpx.Client, upstream: Start) -> None:
    create(api, "svc", upstream(echo))
    expected = {
        "latency": {"latency": 0, "jitter": 0},
        "bandwidth": {"rate": 0},
        "slow_close": {"delay": 0},
        "timeout": {"timeout": 0},
        "reset_peer": {"timeout": 0},
        "slicer": {"average_size": 0, "size_variation": 0, "delay": 0},
        "limit_data": {"bytes": 0},
        "noop": {},
    }
    for type_name, attributes in expected.items():
        r = api.post("/proxies/svc/toxics", json={"type": type_name, "stream": "upstream"})
        assert r.status_code == 200, r.text  # 200, not 201, as Toxiproxy
        assert r.json() == {
            "attributes": attributes,
            "name": f"{type_name}_upstream",
            "type": type_name,
            "stream": "upstream",
            "toxicity": 1,
        }


def test_toxic_update_changes_only_attributes_and_toxicity(api: httpx.Client, upstream: Start) -> None:
    create(api, "svc", upstream(echo))
    api.post("/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 100, "jitter": 10}})
    url = "/proxies/svc/toxics/latency_downstream"

    r = api.patch(url, json={"attributes": {"jitter": 5}})
    assert r.status_code == 200
    assert r.json()["attributes"] == {"latency": 100, "jitter": 5}  # attributes not given are kept
    assert r.json()["toxicity"] == 1

    r = api.post(url, json={"toxicity": 0.25, "name": "renamed", "type": "bandwidth", "stream": "upstream"})
    assert r.json() == {
        "attributes": {"latency": 100, "jitter": 5},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 0.25,
    }
    assert api.get(url).json() == r.json()


def test_toxic_fields_decode_like_go(api: httpx.Client, upstream: Start) -> None:
    create(api, "svc", upstream(echo))
    # Keys match case-insensitively, null keeps the default, the stream is kept as written.
    r = api.post(
        "/proxies/svc/toxics",
        json={"Type": "latency", "STREAM": "UpStream", "toxicity": None, "Attributes": {"LATENCY": 7}},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "attributes": {"latency": 7, "jitter": 0},
        "name": "latency_UpStream",
        "type": "latency",
        "stream": "UpStream",
        "toxicity": 1,
    }


def test_duplicate_proxy_and_toxic_are_409(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    create(api, "svc", up)
    r = api.post("/proxies", json={"name": "svc", "listen": "127.0.0.1:0", "upstream": up.address})
    assert (r.status_code, r.json()) == (409, {"error": "proxy already exists", "status": 409})

    api.post("/proxies/svc/toxics", json={"type": "latency"})
    # Same default name, another type: still the same name.
    r = api.post("/proxies/svc/toxics", json={"type": "slicer", "name": "latency_downstream"})
    assert (r.status_code, r.json()) == (409, {"error": "toxic already exists", "status": 409})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/proxies/nope"),
        ("POST", "/proxies/nope"),
        ("PATCH", "/proxies/nope"),
        ("DELETE", "/proxies/nope"),
        ("GET", "/proxies/nope/toxics"),
        ("POST", "/proxies/nope/toxics"),
        ("GET", "/proxies/nope/toxics/t"),
        ("POST", "/proxies/nope/toxics/t"),
        ("PATCH", "/proxies/nope/toxics/t"),
        ("DELETE", "/proxies/nope/toxics/t"),
    ],
)
def test_unknown_proxy_is_404(api: httpx.Client, method: str, path: str) -> None:
    # The proxy is looked up before the (here invalid) body is read.
    r = api.request(method, path, content=b"{not json")
    assert (r.status_code, r.json()) == (404, {"error": "proxy not found", "status": 404})


def test_unknown_toxic_is_404(api: httpx.Client, upstream: Start) -> None:
    create(api, "svc", upstream(echo))
    for method in ("GET", "POST", "PATCH", "DELETE"):
        r = api.request(method, "/proxies/svc/toxics/nope", content=b"{not json")
        assert (r.status_code, r.json()) == (404, {"error": "toxic not found", "status": 404}), method


@pytest.mark.parametrize(
    ("method", "path", "body", "error"),
    [
        ("POST", "/proxies", b"{not json", "bad request body: invalid character"),
        ("POST", "/proxies", b"", "bad request body: EOF"),
        ("POST", "/proxies", b"[]", "bad request body: json: cannot unmarshal array into Go value"),
        ("POST", "/proxies", b'{"upstream": "127.0.0.1:1"}', "missing required field: name"),
        ("POST", "/proxies", b'{"name": "x"}', "missing required field: upstream"),
        (
            "POST",
            "/proxies",
            b'{"name": 5, "upstream": "127.0.0.1:1"}',
            "bad request body: json: cannot unmarshal number 5 into Go struct field Proxy.name of type "
            "string",
        ),
        ("PATCH", "/proxies/svc", b'{"enabled": "yes"}', "bad request body: json: cannot unmarshal string"),
        ("POST", "/proxies/svc", b"{", "bad request body: invalid character"),
        ("POST", "/proxies/svc/toxics", b"{", "bad request body: invalid character"),
        ("POST", "/proxies/svc/toxics", b'{"type": "packet_loss"}', "invalid toxic type"),
        ("POST", "/proxies/svc/toxics", b'{"type": ""}', "invalid toxic type"),
        (
            "POST",
            "/proxies/svc/toxics",
            b'{"type": "latency", "stream": "sideways"}',
            "stream was invalid, can be either upstream or downstream",
        ),
        (
            "POST",
            "/proxies/svc/toxics",
            b'{"type": "latency", "attributes": {"latency": "1s"}}',
            "bad request body: json: cannot unmarshal string into Go struct field LatencyToxic.latency "
            "of type int64",
        ),
        (
            "POST",
            "/proxies/svc/toxics",
            b'{"type": "latency", "attributes": {"latency": 1.5}}',
            "bad request body",
        ),
        ("POST", "/proxies/svc/toxics", b'{"type": "latency", "attributes": [1]}', "bad request body"),
        ("POST", "/proxies/svc/toxics", b'{"type": "latency", "toxicity": "high"}', "bad request body"),
        ("PATCH", "/proxies/svc/toxics/lat", b"[", "bad request body"),
        ("POST", "/proxies/svc/toxics/lat", b'{"attributes": {"jitter": true}}', "bad request body"),
    ],
)
def test_bad_requests_are_400(
    api: httpx.Client, upstream: Start, method: str, path: str, body: bytes, error: str
) -> None:
    create(api, "svc", upstream(echo))
    api.post("/proxies/svc/toxics", json={"type": "latency", "name": "lat", "attributes": {"jitter": 3}})
    r = api.request(method, path, content=body)
    assert r.status_code == 400, r.text
    assert r.json()["status"] == 400 and r.json()["error"].startswith(error)
    assert set(r.json()) == {"error", "status"}
    # A rejected request changes nothing.
    assert [t["name"] for t in api.get("/proxies/svc/toxics").json()] == ["lat"]
    assert api.get("/proxies/svc/toxics/lat").json()["attributes"] == {"latency": 0, "jitter": 3}
    assert list(api.get("/proxies").json()) == ["svc"]


def test_unknown_routes_methods_and_browsers(api: httpx.Client) -> None:
    r = api.get("/nope")
    assert (r.status_code, r.text) == (404, "404 page not found\n")
    assert api.put("/proxies").status_code == 405
    r = api.get("/proxies", headers={"User-Agent": "Mozilla/5.0 (X11)"})
    assert r.status_code == 403


def test_populate_creates_keeps_and_replaces(api: httpx.Client, upstream: Start) -> None:
    echo_up, other_up = upstream(echo), upstream(send_then(b"other", close=False))
    r = api.post(
        "/populate",
        json=[
            {"name": "a", "listen": "127.0.0.1:0", "upstream": echo_up.address},
            {"name": "b", "listen": "127.0.0.1:0", "upstream": echo_up.address, "enabled": False},
        ],
    )
    assert r.status_code == 201, r.text
    assert list(r.json()) == ["proxies"]
    a, b = r.json()["proxies"]
    assert (a["name"], a["enabled"], b["name"], b["enabled"]) == ("a", True, "b", False)
    a_listen = a["listen"]

    # Same addresses: left alone, toxics and open connections included.
    api.post("/proxies/a/toxics", json={"type": "latency", "attributes": {"latency": 1}})
    with connect(port_of(a_listen)) as sock:
        round_trip(sock)
        r = api.post("/populate", json=[{"name": "a", "listen": a_listen, "upstream": echo_up.address}])
        assert r.status_code == 201
        assert [t["name"] for t in r.json()["proxies"][0]["toxics"]] == ["latency_downstream"]
        assert round_trip(sock) < 1

    # Another upstream: replaced (no toxics), on the same port, sending to the new upstream.
    r = api.post("/populate", json=[{"name": "a", "listen": a_listen, "upstream": other_up.address}])
    assert r.status_code == 201
    (a,) = r.json()["proxies"]
    assert (a["listen"], a["upstream"], a["toxics"]) == (a_listen, other_up.address, [])
    with connect(port_of(a_listen)) as sock:
        assert sock.recv(5) == b"other"

    # Toxiproxy answers an empty list with null.
    assert api.post("/populate", json=[]).json() == {"proxies": None}


def test_populate_errors(api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    # Every entry is checked first: nothing is created when one is invalid.
    r = api.post("/populate", json=[{"name": "c", "upstream": up.address}, {"name": "d"}])
    assert r.status_code == 400
    assert r.json() == {
        "error": "missing required field: upstream at proxy 2",
        "status": 400,
        "proxies": None,
    }
    r = api.post("/populate", json={"proxies": []})
    assert r.status_code == 400 and r.json()["proxies"] is None
    assert r.json()["error"].startswith("bad request body: json: cannot unmarshal object")
    assert api.get("/proxies").json() == {}

    # A proxy that cannot listen stops the list; those before it stay and are listed.
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        r = api.post(
            "/populate",
            json=[
                {"name": "e", "listen": "127.0.0.1:0", "upstream": up.address},
                {"name": "f", "listen": taken, "upstream": up.address},
            ],
        )
    assert r.status_code == 500
    assert r.json()["status"] == 500 and "address already in use" in r.json()["error"]
    assert [p["name"] for p in r.json()["proxies"]] == ["e"]
    assert list(api.get("/proxies").json()) == ["e"]


def test_reset_enables_proxies_and_removes_toxics(tp: Toxiproxy, api: httpx.Client, upstream: Start) -> None:
    up = upstream(echo)
    a, b = create(api, "a", up), create(api, "b", up)
    api.post("/proxies/a/toxics", json={"type": "timeout", "attributes": {"timeout": 0}})
    api.post(
        "/proxies/b/toxics", json={"type": "latency", "stream": "upstream", "attributes": {"latency": 500}}
    )
    api.post("/proxies/b", json={"enabled": False})

    assert tp.reset() is True  # 204
    proxies = api.get("/proxies").json()
    assert all(p["enabled"] and p["toxics"] == [] for p in proxies.values())
    for proxy in (a, b):  # re-enabled on the port it had
        with connect(listen_port(proxy)) as sock:
            assert round_trip(sock) < 0.3


def test_update_proxy_fields(api: httpx.Client, upstream: Start) -> None:
    first, second = upstream(echo), upstream(send_then(b"second", close=False))
    proxy = create(api, "svc", first)
    old_port = listen_port(proxy)

    # A new upstream restarts the proxy: open connections drop, new ones reach the new upstream.
    with connect(old_port) as sock:
        round_trip(sock)
        r = api.patch("/proxies/svc", json={"upstream": second.address, "name": "ignored"})
        assert r.status_code == 200
        assert (r.json()["name"], r.json()["upstream"], r.json()["listen"]) == (
            "svc",
            second.address,
            proxy["listen"],
        )
        sock.settimeout(2)
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    with connect(old_port) as sock:
        assert sock.recv(6) == b"second"

    # A new listen address moves it (POST works as PATCH).
    r = api.post("/proxies/svc", json={"listen": "127.0.0.1:0"})
    new_port = listen_port(r.json())
    assert new_port != old_port
    with pytest.raises(ConnectionRefusedError):
        connect(old_port)
    with connect(new_port) as sock:
        assert sock.recv(6) == b"second"

    # Unchanged fields change nothing.
    r = api.patch("/proxies/svc", json={})
    assert r.json()["listen"] == f"127.0.0.1:{new_port}" and r.json()["enabled"] is True
