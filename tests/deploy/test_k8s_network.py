"""Kubernetes networking: in staging every hop of a request goes through its Toxiproxy proxy (the
names of aftershock.topology and of compose), and in every overlay the NetworkPolicies allow
exactly the request path, Prometheus' scrapes, trace export, DNS and outbound HTTPS, nothing else.
Each check is also run on a planted violation and must fail there."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from aftershock import topology

from tests.deploy import netpol
from tests.deploy.support import KUSTOMIZATIONS, by_kind, container_env, toxiproxy_config

NAMESPACES = {"base": "default", "staging": "aftershock-staging", "sim": "aftershock-sim"}
EDGE, BACKEND, INFERENCE = "aftershock-edge", "aftershock-backend", "aftershock-inference"
REDIS, TOXIPROXY = "aftershock-redis", "aftershock-toxiproxy"
# Where the base's Secret points Redis (deploy/README.md): the in-namespace aftershock-redis.
DOCUMENTED_REDIS = ("aftershock-redis", 6379)
METRICS = {EDGE: 9100, BACKEND: 9101, INFERENCE: 9102}
OUTSIDE = [p.name for p in netpol.outside_peers()]


@dataclass(frozen=True)
class Hop:
    client: str  # workload that dials
    proxy: str  # the topology's name for this hop
    host: str
    port: int


def _workload(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (found,) = [
        d for d in docs if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"] == name
    ]
    return found


def _container(docs: list[dict[str, Any]], workload: str) -> dict[str, Any]:
    return dict(_workload(docs, workload)["spec"]["template"]["spec"]["containers"][0])


def _redis(url: Any) -> tuple[str, int]:
    if not isinstance(url, str):  # from the Secret
        return DOCUMENTED_REDIS
    m = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert m, url
    return m.group(1), int(m.group(2))


def request_hops(docs: list[dict[str, Any]]) -> list[Hop]:
    """Every connection a request's path makes, as its client configures it."""
    edge, backend = container_env(_container(docs, EDGE)), container_env(_container(docs, BACKEND))
    host, _, port = edge["AFTERSHOCK_EDGE_BACKEND_TARGET"].rpartition(":")
    hops = [Hop(EDGE, topology.EDGE_BACKEND, host, int(port))]
    hops.append(Hop(EDGE, topology.EDGE_REDIS, *_redis(edge["AFTERSHOCK_EDGE_REDIS_URL"])))
    hops.append(Hop(BACKEND, topology.BACKEND_REDIS, *_redis(backend["AFTERSHOCK_BACKEND_REDIS_URL"])))
    registry = yaml.safe_load(by_kind(docs, "ConfigMap")["aftershock-registry"]["data"]["registry.yaml"])
    for i, replica in enumerate(registry["replicas"]):
        host, _, port = replica["address"].rpartition(":")
        hops.append(Hop(BACKEND, topology.backend_inference(i), host, int(port)))
    return hops


def resolve(docs: list[dict[str, Any]], host: str, port: int) -> tuple[str, str | None, int]:
    """(workload, pod name or None, container port) a host:port reaches through its Service."""
    pod, _, svc_name = host.rpartition(".") if "." in host else ("", "", host)
    svc = by_kind(docs, "Service")[svc_name]
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    workloads = [
        d
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        and svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    (workload,) = workloads
    names = {
        p["name"]: p["containerPort"]
        for c in workload["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    target = svc_port["targetPort"]
    if pod:
        assert workload["kind"] == "StatefulSet" and workload["spec"]["serviceName"] == svc_name
        index = int(pod.rpartition("-")[2])
        assert pod == f"{workload['metadata']['name']}-{index}" and index < workload["spec"]["replicas"], host
    return workload["metadata"]["name"], pod or None, names[target] if isinstance(target, str) else target


def _proxies(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pod = _workload(docs, TOXIPROXY)["spec"]["template"]["spec"]
    (toxiproxy,) = [c for c in pod["containers"] if c["name"] == "toxiproxy"]
    flags = dict(a.lstrip("-").split("=", 1) for a in toxiproxy["args"] if "=" in a)
    mounts = {m["mountPath"]: m["name"] for m in toxiproxy["volumeMounts"]}
    folder, _, file = flags["config"].rpartition("/")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[folder]]
    proxies: list[dict[str, Any]] = json.loads(
        by_kind(docs, "ConfigMap")[volume["configMap"]["name"]]["data"][file]
    )
    return proxies


def check_every_hop_through_toxiproxy(docs: list[dict[str, Any]]) -> set[netpol.Flow]:
    """Each hop dials Toxiproxy on the listen port of the proxy named for that hop, whose upstream
    is the service the hop means; returns the connections this makes."""
    proxies = {p["name"]: p for p in _proxies(docs)}
    hops = request_hops(docs)
    assert set(proxies) == {h.proxy for h in hops} == {p["name"] for p in toxiproxy_config()}
    flows: set[netpol.Flow] = set()
    for hop in hops:
        workload, _, port = resolve(docs, hop.host, hop.port)
        proxy = proxies[hop.proxy]
        assert workload == TOXIPROXY, f"{hop.client} reaches {workload} without Toxiproxy ({hop.proxy})"
        assert port == int(proxy["listen"].rpartition(":")[2]), (
            f"{hop.proxy}: dials {port}, proxy listens elsewhere"
        )
        host, _, up_port = proxy["upstream"].rpartition(":")
        upstream, pod, up_container_port = resolve(docs, host, int(up_port))
        expected = {
            topology.EDGE_BACKEND: BACKEND,
            topology.EDGE_REDIS: REDIS,
            topology.BACKEND_REDIS: REDIS,
        }.get(hop.proxy, INFERENCE)
        assert upstream == expected, (hop.proxy, upstream)
        if upstream == INFERENCE:
            assert pod == f"{INFERENCE}-{hop.proxy.rpartition('_')[2]}", (hop.proxy, pod)
        flows |= {(hop.client, TOXIPROXY, port, "TCP"), (TOXIPROXY, upstream, up_container_port, "TCP")}
    return flows


def direct_flows(docs: list[dict[str, Any]]) -> set[netpol.Flow]:
    flows: set[netpol.Flow] = set()
    for hop in request_hops(docs):
        workload, _, port = resolve(docs, hop.host, hop.port)
        flows.add((hop.client, workload, port, "TCP"))
    return flows


def expected_flows(overlay: str, docs: list[dict[str, Any]]) -> set[netpol.Flow]:
    """The request path, plus: the edge's HTTP port from anywhere outside; every metrics port from
    Prometheus; OTLP, DNS and outbound HTTPS from the services; DNS from Toxiproxy."""
    path = check_every_hop_through_toxiproxy(docs) if overlay == "staging" else direct_flows(docs)
    edge_port = resolve(docs, EDGE, 8000)[2]
    public = {(peer, EDGE, edge_port, "TCP") for peer in OUTSIDE}
    scraped = {("prometheus", w, port, "TCP") for w, port in METRICS.items()}
    services = (EDGE, BACKEND, INFERENCE)
    out = {(s, "otlp-collector", 4317, "TCP") for s in services} | {
        (s, "internet", 443, "TCP") for s in services
    }
    dns_clients = services + ((TOXIPROXY,) if overlay == "staging" else ())
    dns = {(s, "dns", 53, proto) for s in dns_clients for proto in ("UDP", "TCP")}
    if overlay == "staging":
        scraped |= {("prometheus", TOXIPROXY, 8474, "TCP"), ("prometheus", TOXIPROXY, 9108, "TCP")}
    return path | public | scraped | out | dns


@pytest.mark.parametrize("overlay", list(KUSTOMIZATIONS))
def test_network_policies_allow_exactly_the_request_path(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    allowed = netpol.allowed_flows(docs, NAMESPACES[overlay])
    expected = expected_flows(overlay, docs)
    assert allowed == expected, (
        f"allowed, not meant: {sorted(allowed - expected)}; meant, blocked: {sorted(expected - allowed)}"
    )


def test_every_staging_hop_goes_through_its_toxiproxy_proxy(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    flows = check_every_hop_through_toxiproxy(rendered["staging"])
    assert {f[:2] for f in flows} == {
        (EDGE, TOXIPROXY),
        (BACKEND, TOXIPROXY),
        (TOXIPROXY, BACKEND),
        (TOXIPROXY, INFERENCE),
        (TOXIPROXY, REDIS),
    }


# -- negative controls: each check fails on a planted violation --------------------------------------


def _set_env(docs: list[dict[str, Any]], workload: str, name: str, value: str) -> None:
    for e in _container(docs, workload)["env"]:
        if e["name"] == name:
            e.pop("valueFrom", None)
            e["value"] = value


def test_a_hop_that_skips_toxiproxy_fails_the_check(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = copy.deepcopy(rendered["staging"])
    _set_env(docs, EDGE, "AFTERSHOCK_EDGE_BACKEND_TARGET", "aftershock-backend:50061")
    with pytest.raises(AssertionError, match="without Toxiproxy"):
        check_every_hop_through_toxiproxy(docs)

    docs = copy.deepcopy(rendered["staging"])
    registry = by_kind(docs, "ConfigMap")["aftershock-registry"]["data"]
    registry["registry.yaml"] = registry["registry.yaml"].replace(
        "aftershock-toxiproxy:15052", "aftershock-inference-1.aftershock-inference:50051"
    )
    with pytest.raises(AssertionError, match="without Toxiproxy"):
        check_every_hop_through_toxiproxy(docs)


def test_a_proxy_pointing_at_the_wrong_service_fails_the_check(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = copy.deepcopy(rendered["staging"])
    cm = next(c for n, c in by_kind(docs, "ConfigMap").items() if n.startswith("aftershock-toxiproxy"))
    cm["data"]["toxiproxy.json"] = cm["data"]["toxiproxy.json"].replace(
        "aftershock-inference-0.aftershock-inference:50051",
        "aftershock-inference-1.aftershock-inference:50051",
    )
    with pytest.raises(AssertionError):
        check_every_hop_through_toxiproxy(docs)


@pytest.mark.parametrize(
    "plant",
    [
        "backend reachable from any pod",
        "no default deny",
        "edge may dial the backend directly",
    ],
)
def test_a_policy_that_lets_more_through_fails_the_check(
    plant: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = copy.deepcopy(rendered["staging"])
    policies = by_kind(docs, "NetworkPolicy")
    if plant == "backend reachable from any pod":
        policies["aftershock-backend"]["spec"]["ingress"].append({"ports": [{"port": 50061}]})
    elif plant == "no default deny":
        docs.remove(policies["aftershock-default-deny"])
    else:
        policies["aftershock-edge"]["spec"]["egress"].append(
            {"to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": BACKEND}}}]}
        )
        policies["aftershock-backend"]["spec"]["ingress"].append(
            {"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "aftershock-edge"}}}]}
        )
    with pytest.raises(AssertionError, match="allowed, not meant"):
        test_network_policies_allow_exactly_the_request_path("staging", {"staging": docs})
