"""grafana/: provisioning files and dashboards are valid, coherent and queryable."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import REPO_ROOT
from harness.observability import (
    GRAFANA_DASHBOARDS,
    dashboard_expressions,
    iter_panels,
    load_yaml,
    promql_for_test,
)
from harness.tools import find_tool

GRAFANA = REPO_ROOT / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "dashboards.yml"
# The compose file mounts ./grafana/dashboards here; the provider must read the same path.
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards"
DASHBOARD_FILES = sorted(GRAFANA_DASHBOARDS.glob("*.json"))
# Panels that only lay out other panels.
LAYOUT_PANELS = {"row", "text"}
REQUIRED_DASHBOARDS = {"tally-overview", "tally-postgres", "tally-host", "tally-traefik"}


def provisioned_uids() -> set[str]:
    return {ds["uid"] for ds in load_yaml(DATASOURCES)["datasources"]}


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_datasource_provisioning() -> None:
    doc = load_yaml(DATASOURCES)
    assert doc["apiVersion"] == 1
    [ds] = doc["datasources"]
    assert ds["uid"] == "prometheus" and ds["type"] == "prometheus"
    assert ds["url"] == "http://prometheus:9090"
    assert ds["editable"] is False and ds["isDefault"] is True


def test_dashboard_provider_is_read_only_and_points_at_the_mount() -> None:
    doc = load_yaml(PROVIDERS)
    [provider] = doc["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["disableDeletion"] is True
    assert provider["options"]["path"] == DASHBOARDS_MOUNT


def test_required_dashboards_exist_with_unique_uids() -> None:
    uids = [load(path)["uid"] for path in DASHBOARD_FILES]
    assert len(uids) == len(set(uids)), uids
    assert set(uids) >= REQUIRED_DASHBOARDS
    titles = [load(path)["title"] for path in DASHBOARD_FILES]
    assert len(titles) == len(set(titles))


def datasource_refs(node: Any) -> list[Any]:
    """Every `datasource` value anywhere in a dashboard (panels, targets, annotations, variables)."""
    refs = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                refs.append(value)
            refs += datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            refs += datasource_refs(item)
    return refs


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_coherent(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    assert dashboard.get("id") is None, "exported ids clash across Grafana instances; drop them"
    refs = datasource_refs(dashboard)
    assert refs, "no datasource references at all"
    for ref in refs:
        # A string name, ${DS_...} import placeholder or a default (null) would resolve differently
        # on each install; only the provisioned uid is stable.
        assert isinstance(ref, dict) and ref.get("uid") in provisioned_uids(), ref
        assert ref.get("type") == "prometheus", ref
    panels = list(iter_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] in LAYOUT_PANELS:
            continue
        exprs = [t.get("expr", "").strip() for t in panel.get("targets", [])]
        assert exprs and all(exprs), f"panel {panel.get('title')!r} has no query"
        assert panel.get("title"), "untitled panel"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))


def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """promtool has no offline 'parse this query'; it does parse rule files. Each query (Grafana
    variables substituted) becomes a recording rule, and `promtool check rules` parses them all."""
    exprs = dashboard_expressions()
    assert len(exprs) >= 40
    leftover = [expr for _, expr in exprs if re.search(r"\$\w", promql_for_test(expr))]
    assert not leftover, f"unsubstituted Grafana variables: {leftover}"
    rules = [{"record": f"dashboard:query_{i}", "expr": promql_for_test(expr)} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [find_tool("/usr/bin/promtool"), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    names = {f"dashboard:query_{i}": where for i, (where, _) in enumerate(exprs)}
    assert result.returncode == 0, "\n".join(
        [result.stdout + result.stderr] + [f"{k} = {v}" for k, v in names.items() if k in result.stdout + result.stderr]
    )
