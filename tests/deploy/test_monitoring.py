"""Prometheus, Alertmanager and Grafana in compose: scrape targets, job names the alerts match,
provisioning, and promtool/amtool accept the configs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.support import (
    DEPLOY,
    PROFILES,
    ROOT,
    active,
    check_job_names,
    cmd_output,
    command_service,
    effective,
    host_path,
    hostport,
    listen_port,
    resolve,
    run_cmd,
    tool,
)


def test_prometheus_scrapes_every_service_on_its_metrics_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    for profile in PROFILES:
        services = active(compose, profile)
        scraped: dict[str, list[str]] = {}
        for job in config["scrape_configs"]:
            for static in job["static_configs"]:
                for target in static["targets"]:
                    host, port = hostport(target)
                    if host == "localhost":
                        continue
                    name, svc = resolve(services, host)
                    service = command_service(svc)
                    if service is not None:
                        assert port == effective(service, svc["environment"], "metrics_port"), (job, target)
                        scraped.setdefault(service, []).append(name)
                    elif name == "toxiproxy":
                        assert port == listen_port("toxiproxy", svc) and "-proxy-metrics" in svc["command"]
                        scraped.setdefault("toxiproxy", []).append(name)
        for name, svc in services.items():
            service = command_service(svc)
            if service is not None:
                assert name in scraped.get(service, []), f"{profile}: {name} is not scraped"
        assert "toxiproxy" in scraped


def test_scrape_job_names_match_the_alerts(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    services = active(compose, "sim")
    jobs: dict[str, str | None] = {}
    for job in config["scrape_configs"]:
        kinds = set()
        for static in job["static_configs"]:
            for target in static["targets"]:
                host = hostport(target)[0]
                kinds.add(None if host == "localhost" else command_service(resolve(services, host)[1]))
        assert len(kinds) == 1, f"job {job['job_name']} mixes services"
        jobs[job["job_name"]] = kinds.pop()
    check_job_names(jobs)


def test_grafana_is_provisioned_with_the_dashboards(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    assert grafana["image"].startswith("grafana/grafana:11.6."), "dashboards are built for Grafana 11.6"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/dashboards.yaml").read_text())
    assert mounts["/etc/grafana/provisioning"] == "../dashboards/provisioning"
    assert mounts[provider["providers"][0]["options"]["path"]] == "../dashboards/json"
    assert grafana["env_file"] == "../dashboards/grafana.env"
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "dashboards/grafana.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    services = compose["services"]
    for url, port in ((env["AFTERSHOCK_PROMETHEUS_URL"], "9090"), (env["AFTERSHOCK_JAEGER_URL"], "16686")):
        host = url.split("//")[1].split(":")[0]
        assert host in services and url.endswith(":" + port), url


def test_prometheus_loads_every_alert_file(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert host_path(prom, config_path) == "./prometheus/prometheus.yml"
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (rule_glob,) = config["rule_files"]
    rules_dir = os.path.normpath(Path(config_path).parent / Path(rule_glob).parent)
    assert host_path(prom, rules_dir) == "../alerts" and Path(rule_glob).name == "*.rules.yml"
    assert "--enable-feature=exemplar-storage" in prom["command"]


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    # As in the container: config/ beside alerts/, so promtool also checks every rule file.
    (tmp_path / "config").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path / "config" / "prometheus.yml")
    (tmp_path / "alerts").symlink_to(ROOT / "alerts")
    result = run_cmd([tool("promtool"), "check", "config", str(tmp_path / "config" / "prometheus.yml")])
    assert result.returncode == 0, cmd_output(result)
    count = len(list((ROOT / "alerts").glob("*.rules.yml")))
    assert f"{count} rule files found" in result.stdout, cmd_output(result)


def test_amtool_accepts_the_alertmanager_config() -> None:
    result = run_cmd([tool("amtool"), "check-config", str(DEPLOY / "prometheus" / "alertmanager.yml")])
    assert result.returncode == 0, cmd_output(result)
    config = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    routed = {m for r in config["route"]["routes"] for m in r["matchers"]}
    severities = set()
    for path in (ROOT / "alerts").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            severities |= {r["labels"]["severity"] for r in group["rules"] if "alert" in r}
    assert {f'severity="{s}"' for s in severities} <= routed
