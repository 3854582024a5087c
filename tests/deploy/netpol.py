"""What the rendered NetworkPolicies let through: a small evaluator of Kubernetes NetworkPolicy
semantics (podSelector, namespaceSelector, ipBlock, ports by number or name, policyTypes; an
isolated pod admits only what some policy selecting it allows, on both ends of a connection) over
the overlay's pods and the peers outside the namespace that the stack talks to."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Peer:
    name: str
    namespace: str
    labels: dict[str, str] = field(hash=False)
    ip: str
    # (port, protocol) it accepts connections on.
    ports: frozenset[tuple[int, str]] = frozenset()
    port_names: dict[str, int] = field(default_factory=dict, hash=False)


Flow = tuple[str, str, int, str]  # source, destination, port, protocol


def outside_peers() -> list[Peer]:
    """Who lives outside the namespace: a client anywhere, kube-prometheus-stack's Prometheus, the
    OTLP collector (observability), cluster DNS, an address on the internet, and a pod in another
    namespace of the cluster."""
    return [
        Peer("other-namespace", "elsewhere", {"app": "anything"}, "10.8.0.9"),
        Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.8.0.10"),
        Peer("otlp-collector", "observability", {"app": "jaeger"}, "10.8.0.11", frozenset({(4317, "TCP")})),
        Peer(
            "dns", "kube-system", {"k8s-app": "kube-dns"}, "10.8.0.12", frozenset({(53, "UDP"), (53, "TCP")})
        ),
        Peer("internet", "", {}, "203.0.113.5", frozenset({(443, "TCP"), (80, "TCP")})),
    ]


def namespace_peers(docs: list[dict[str, Any]], namespace: str) -> list[Peer]:
    """One peer per workload (its pod template), plus an unlabelled pod someone starts in the
    namespace (kubectl run): it must reach nothing either."""
    peers = [Peer("stray-pod", namespace, {"run": "debug"}, "10.9.0.1")]
    for i, d in enumerate(x for x in docs if x["kind"] in ("Deployment", "StatefulSet")):
        spec = d["spec"]["template"]
        ports = {
            (p["containerPort"], p.get("protocol", "TCP"))
            for c in spec["spec"]["containers"]
            for p in c["ports"]
        }
        names = {p["name"]: p["containerPort"] for c in spec["spec"]["containers"] for p in c["ports"]}
        peers.append(
            Peer(
                d["metadata"]["name"],
                namespace,
                spec["metadata"]["labels"],
                f"10.9.1.{i + 1}",
                frozenset(ports),
                names,
            )
        )
    return peers


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _peer_matches(rule_peer: dict[str, Any], peer: Peer, policy_ns: str) -> bool:
    if "ipBlock" in rule_peer:
        block = rule_peer["ipBlock"]
        ip = ipaddress.ip_address(peer.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    ns_sel, pod_sel = rule_peer.get("namespaceSelector"), rule_peer.get("podSelector")
    ns_labels = {"kubernetes.io/metadata.name": peer.namespace} if peer.namespace else None
    if ns_labels is None:  # not a pod: only ipBlocks match it
        return False
    if ns_sel is None and peer.namespace != policy_ns:
        return False
    return _selects(ns_sel, ns_labels) and _selects(pod_sel, peer.labels)


def _port_matches(rule: dict[str, Any], dst: Peer, port: int, protocol: str) -> bool:
    entries = rule.get("ports") or []
    if not entries:
        return True
    for entry in entries:
        if entry.get("protocol", "TCP") != protocol:
            continue
        want = entry.get("port")
        if want is None:
            return True
        number = dst.port_names.get(want) if isinstance(want, str) else want
        if number is not None and number <= port <= entry.get("endPort", number):
            return True
    return False


def _allowed_at(
    policies: list[dict[str, Any]], pod: Peer, other: Peer, dst: Peer, port: int, protocol: str, kind: str
) -> bool:
    """Whether `pod`'s policies of `kind` (Ingress, Egress) admit the connection with `other`."""
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", pod.namespace) == pod.namespace
        and _selects(p["spec"]["podSelector"], pod.labels)
        and kind in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # not isolated in this direction
    key, peers_key = ("ingress", "from") if kind == "Ingress" else ("egress", "to")
    for policy in selecting:
        ns = policy["metadata"].get("namespace", pod.namespace)
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if (not peers or any(_peer_matches(rp, other, ns) for rp in peers)) and _port_matches(
                rule, dst, port, protocol
            ):
                return True
    return False


def allowed_flows(docs: list[dict[str, Any]], namespace: str) -> set[Flow]:
    """Every (source, destination, port, protocol) the policies allow, between distinct peers of
    which one is in the namespace, to ports the destination listens on."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    inside = namespace_peers(docs, namespace)
    everyone = inside + outside_peers()
    flows: set[Flow] = set()
    for src in everyone:
        for dst in everyone:
            if src is dst or namespace not in (src.namespace, dst.namespace):
                continue
            for port, protocol in dst.ports:
                if src.namespace == namespace and not _allowed_at(
                    policies, src, dst, dst, port, protocol, "Egress"
                ):
                    continue
                if dst.namespace == namespace and not _allowed_at(
                    policies, dst, src, dst, port, protocol, "Ingress"
                ):
                    continue
                flows.add((src.name, dst.name, port, protocol))
    return flows
