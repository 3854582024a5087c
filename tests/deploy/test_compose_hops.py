"""deploy/compose.yaml: every hop goes through a Toxiproxy proxy of aftershock.topology,
and the models served are the models routed."""

from __future__ import annotations

import functools
from typing import Any

from aftershock import topology
from aftershock.backend.registry import load_registry_file
from aftershock.chaos.spec import Load, load_drill
from aftershock.inference.settings import InferenceSettings

from tests.deploy.support import (
    DEPLOY,
    PROFILES,
    ROOT,
    active,
    command_service,
    host_path,
    hostport,
    listen_port,
    proxy,
    redis_hostport,
    resolve,
    setting_default,
    toxiproxy_config,
)


def _through(
    services: dict[str, dict[str, Any]], proxy_name: str, client_target: tuple[str, int]
) -> tuple[str, dict[str, Any], int]:
    """A client dials `client_target`: it must be the proxy's listen port on Toxiproxy. Returns the
    service behind the proxy and the port dialled there."""
    p = proxy(proxy_name)
    assert client_target == ("toxiproxy", hostport(p["listen"])[1]), (proxy_name, client_target)
    host, port = hostport(p["upstream"])
    up_name, up_svc = resolve(services, host)
    return up_name, up_svc, port


def test_proxies_are_the_stack_topology_and_every_hop_goes_through_them(compose: dict[str, Any]) -> None:
    proxies = toxiproxy_config()
    for p in proxies:
        assert set(p) == {"name", "listen", "upstream", "enabled"} and p["enabled"] is True, p
        assert p["listen"].startswith("0.0.0.0:"), p
    registry = load_registry_file(DEPLOY / "config" / "registry.yaml")
    replicas = len(registry.replicas)
    expected = {topology.EDGE_BACKEND, topology.BACKEND_REDIS, topology.EDGE_REDIS}
    expected |= {topology.backend_inference(i) for i in range(replicas)}
    assert {p["name"] for p in proxies} == expected
    assert len({hostport(p["listen"])[1] for p in proxies}) == len(proxies), "listen ports must differ"

    for profile in PROFILES:
        services = active(compose, profile)
        tname, tsvc = resolve(services, "toxiproxy")
        through = functools.partial(_through, services)
        edge_env = services["edge"]["environment"]
        backend_env = services["backend"]["environment"]
        # edge -> edge_backend -> backend's gRPC port
        up, svc, port = through(topology.EDGE_BACKEND, hostport(edge_env["AFTERSHOCK_EDGE_BACKEND_TARGET"]))
        assert command_service(svc) == "backend" and port == listen_port("backend", svc)
        # backend -> backend_redis -> redis; edge -> edge_redis -> redis
        up, svc, port = through(
            topology.BACKEND_REDIS, redis_hostport(backend_env["AFTERSHOCK_BACKEND_REDIS_URL"])
        )
        assert up == "redis" and port == 6379
        up, svc, port = through(topology.EDGE_REDIS, redis_hostport(edge_env["AFTERSHOCK_EDGE_REDIS_URL"]))
        assert up == "redis" and port == 6379
        # backend -> backend_inference_<i> -> the replica the registry names inference-<i>
        for i, replica in enumerate(registry.replicas):
            up, svc, port = through(topology.backend_inference(i), hostport(replica.address))
            assert command_service(svc) == "inference", (profile, replica)
            assert replica.name == f"inference-{i}", "backend_inference_<i> fronts inference-<i>"
            assert svc["environment"]["AFTERSHOCK_INFERENCE_REPLICA_NAME"] == replica.name, (profile, up)
            assert port == listen_port("inference", svc), (profile, up)
        # The backend reads the registry the compose file mounts.
        registry_file = backend_env["AFTERSHOCK_BACKEND_REGISTRY_FILE"]
        assert host_path(services["backend"], registry_file) == "./config/registry.yaml"
        assert tname == "toxiproxy" and "-config=/config/toxiproxy.json" in tsvc["command"]


def test_models_served_match_the_registry(compose: dict[str, Any]) -> None:
    registry = load_registry_file(DEPLOY / "config" / "registry.yaml")
    routed = {m.name for m in registry.models}
    for profile in PROFILES:
        served: set[str] = set()
        for svc in active(compose, profile).values():
            env = svc.get("environment") or {}
            if command_service(svc) != "inference":
                continue
            if env.get("AFTERSHOCK_INFERENCE_ENGINE", setting_default("inference", "engine")) == "sim":
                models_file = env["AFTERSHOCK_INFERENCE_MODELS_FILE"]
                host_file = DEPLOY / host_path(svc, models_file)
                names = {m.name for m in InferenceSettings(models_file=host_file).resolved_sim_models()}
            else:
                names = {env["AFTERSHOCK_INFERENCE_VLLM_SERVED_MODEL_NAME"]}
            served = names if not served else served & names
        if profile == "sim":
            assert served == routed, "the sim profile serves every routed model"
        else:
            assert served and served <= routed, "the gpu profile's model must be routed"
    # The drills' models run unchanged against `--profile sim`.
    sim_models = {
        m.name for m in InferenceSettings(models_file=DEPLOY / "config" / "models.yaml").resolved_sim_models()
    }
    drill_models = {Load().model} | {
        d.load.model
        for p in sorted((ROOT / "chaos").glob("*.yaml"))
        if p.name != "models.yaml" and (d := load_drill(p)).upstream is None
    }  # a drill with its own model servers (`upstream:`) runs only against a local stack
    assert drill_models <= sim_models
