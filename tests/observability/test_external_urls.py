"""Links in alert notifications point where operators open Prometheus and Alertmanager, not at a container
id: ``--web.external-url`` from compose, checked on the rendered model and on the real binaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from harness.observability import (
    alertmanager_test_config,
    start_alertmanager,
    start_prometheus,
    start_webhook_logger,
)
from harness.procs import wait_for
from tests.stack.stackutil import flags, render

EXTERNAL = {
    "PROMETHEUS_EXTERNAL_URL": "https://ops.example.com/prometheus/",
    "ALERTMANAGER_EXTERNAL_URL": "https://ops.example.com/alertmanager/",
}
WEB_FLAGS = ("web.external-url", "web.route-prefix")


def web_args(model: dict[str, Any], service: str) -> list[str]:
    command = flags(model["services"][service]["command"])
    return [f"--{name}={command[name]}" for name in WEB_FLAGS]


def test_external_urls_default_to_the_documented_tunnel_and_follow_env() -> None:
    default, configured = render(), render(EXTERNAL)
    for service, variable, port in (
        ("prometheus", "PROMETHEUS_EXTERNAL_URL", 9090),
        ("alertmanager", "ALERTMANAGER_EXTERNAL_URL", 9093),
    ):
        assert flags(default["services"][service]["command"])["web.external-url"] == f"http://localhost:{port}/"
        assert flags(configured["services"][service]["command"])["web.external-url"] == EXTERNAL[variable]
        # Inside the stack the UI and API stay at / (healthchecks, Grafana's datasource, Prometheus -> AM).
        assert flags(configured["services"][service]["command"])["web.route-prefix"] == "/"


@pytest.mark.slow
def test_real_alertmanager_links_to_its_external_url(tmp_path: Path) -> None:
    args = web_args(render(EXTERNAL), "alertmanager")
    hook = start_webhook_logger(tmp_path)
    try:
        am = start_alertmanager(tmp_path, alertmanager_test_config(hook.url), extra_args=args)
        try:
            assert requests.get(f"{am.url}/-/healthy", timeout=5).status_code == 200
            am.post_alerts([{"labels": {"alertname": "BackupStale", "severity": "warning"}}])
            wait_for(lambda: hook.received("default", "BackupStale"), 20, "alert at the webhook")
            urls = {record["externalURL"] for record in hook.notifications()}
            assert urls == {EXTERNAL["ALERTMANAGER_EXTERNAL_URL"].rstrip("/")}
        finally:
            am.stop()
    finally:
        hook.stop()


@pytest.mark.slow
def test_real_prometheus_serves_at_root_with_an_external_path(tmp_path: Path) -> None:
    args = web_args(render(EXTERNAL), "prometheus")
    prometheus = start_prometheus(tmp_path, {"global": {"scrape_interval": "15s"}}, extra_args=args)
    try:
        assert requests.get(f"{prometheus.url}/-/healthy", timeout=5).status_code == 200
        reported = requests.get(f"{prometheus.url}/api/v1/status/flags", timeout=5).json()["data"]
        assert reported["web.external-url"] == EXTERNAL["PROMETHEUS_EXTERNAL_URL"]
    finally:
        prometheus.stop()
