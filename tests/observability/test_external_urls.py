"""Links in alert notifications point where operators open Prometheus and Alertmanager, not at a container
id: ``--web.external-url`` from compose, checked on the rendered model and on the real binaries. Runbook links
point under RUNBOOK_BASE_URL: compose hands it to Prometheus, which expands it into an external label that
every rule's runbook_url starts with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests

from harness import REPO_ROOT
from harness.observability import (
    alertmanager_test_config,
    prometheus_test_config,
    start_alertmanager,
    start_prometheus,
    start_webhook_logger,
    write_rules,
)
from harness.procs import wait_for
from tests.stack.stackutil import flags, render

EXTERNAL = {
    "PROMETHEUS_EXTERNAL_URL": "https://ops.example.com/prometheus/",
    "ALERTMANAGER_EXTERNAL_URL": "https://ops.example.com/alertmanager/",
}
WEB_FLAGS = ("web.external-url", "web.route-prefix")
RUNBOOK_BASE_URL = "https://git.example.com/ops/tally/-/blob/main"


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


def test_runbook_base_url_defaults_to_the_checkout_and_follows_env() -> None:
    default, configured = render(), render({"RUNBOOK_BASE_URL": RUNBOOK_BASE_URL})
    assert default["services"]["prometheus"]["environment"]["RUNBOOK_BASE_URL"] == "."
    assert configured["services"]["prometheus"]["environment"]["RUNBOOK_BASE_URL"] == RUNBOOK_BASE_URL
    # Out of the box a runbook link is a path in the checkout next to compose.yaml, and .env.example says so.
    assert (REPO_ROOT / "./docs/runbooks/Watchdog.md").is_file()
    assert re.search(r"^# RUNBOOK_BASE_URL=\.$", (REPO_ROOT / ".env.example").read_text(), re.M)


@pytest.mark.slow
def test_real_prometheus_sends_runbook_links_under_the_base_url(tmp_path: Path) -> None:
    """What the operator reads at the alert-logger: RUNBOOK_BASE_URL + the runbook's path, with Prometheus
    run on what compose gives it (its feature flags and environment, rendered by compose itself)."""
    service = render({"RUNBOOK_BASE_URL": RUNBOOK_BASE_URL})["services"]["prometheus"]
    features = [arg for arg in service["command"] if arg.startswith("--enable-feature=")]
    hook = start_webhook_logger(tmp_path)
    try:
        am = start_alertmanager(tmp_path, alertmanager_test_config(hook.url))
        try:
            config = prometheus_test_config({}, alertmanager=am.address, rule_files=write_rules(tmp_path / "rules"))
            prometheus = start_prometheus(tmp_path, config, extra_args=features, env=service["environment"])
            try:
                # Watchdog fires at the first evaluation; its notification carries the rendered link.
                wait_for(lambda: hook.received("deadman", "Watchdog"), 30, "Watchdog at the webhook")
                urls = {alert["runbook_url"] for alert in hook.received("deadman", "Watchdog")}
                assert urls == {f"{RUNBOOK_BASE_URL}/docs/runbooks/Watchdog.md"}
                assert (REPO_ROOT / urls.pop().removeprefix(RUNBOOK_BASE_URL + "/")).is_file()
            finally:
                prometheus.stop()
        finally:
            am.stop()
    finally:
        hook.stop()
