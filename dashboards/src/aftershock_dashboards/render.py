"""Render every dashboard to the JSON that Grafana's file provider loads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard

from . import llm_serving, overview, resilience, routing

# Order is the order of the dashboards list in Grafana's folder view: overview first.
BUILDERS: tuple[Callable[[], dashboard.Dashboard], ...] = (
    overview.build,
    llm_serving.build,
    resilience.build,
    routing.build,
)

# dashboards/json, next to dashboards/src.
JSON_DIR = Path(__file__).resolve().parents[2] / "json"


def to_text(model: dashboard.Dashboard) -> str:
    # Sorted keys and a trailing newline: byte-stable output, so staleness is a plain text compare.
    return json.dumps(model, cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render_all() -> dict[str, str]:
    """File name (`<uid>.json`) -> rendered JSON text, for every dashboard."""
    rendered: dict[str, str] = {}
    for build in BUILDERS:
        model = build()
        if not model.uid:
            raise ValueError(f"{build.__module__} built a dashboard without a uid")
        name = f"{model.uid}.json"
        if name in rendered:
            raise ValueError(f"duplicate dashboard uid {model.uid}")
        rendered[name] = to_text(model)
    return rendered


def render_dicts() -> list[dict[str, Any]]:
    """Every dashboard as the JSON object Grafana reads."""
    return [json.loads(text) for text in render_all().values()]


def stale_files(json_dir: Path = JSON_DIR) -> list[str]:
    """Committed files that differ from a fresh render, are missing, or belong to no dashboard."""
    rendered = render_all()
    stale = [
        name
        for name, text in rendered.items()
        if not (json_dir / name).is_file() or (json_dir / name).read_text(encoding="utf-8") != text
    ]
    orphans = [p.name for p in json_dir.glob("*.json") if p.name not in rendered] if json_dir.is_dir() else []
    return sorted(stale + orphans)


def write_all(json_dir: Path = JSON_DIR) -> list[str]:
    """Write every dashboard, delete JSON files no builder produces; return the names changed."""
    changed = stale_files(json_dir)
    rendered = render_all()
    json_dir.mkdir(parents=True, exist_ok=True)
    for name in changed:
        path = json_dir / name
        if name in rendered:
            path.write_text(rendered[name], encoding="utf-8")
        else:
            path.unlink()  # a dashboard that was removed or renamed must not stay provisioned
    return changed
