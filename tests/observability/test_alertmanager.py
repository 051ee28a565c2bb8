"""alertmanager/alertmanager.yml: syntax, routing, and real delivery + inhibition.

The delivery tests run the Debian Alertmanager with our config (webhook URLs rewritten to a local
alert-logger, timings shortened) and post alerts through its v2 API, like Prometheus does.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import yaml

from harness.observability import (
    ALERTMANAGER_CONFIG,
    ObservabilityStack,
    load_yaml,
    rule_expressions,
)
from harness.procs import wait_for
from harness.tools import find_tool

AMTOOL = "/usr/bin/amtool"


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    find_tool(AMTOOL)
    return subprocess.run([AMTOOL, *args], capture_output=True, text=True, timeout=30)


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "Watchdog", "severity": "info"}, "deadman"),
        ({"alertname": "AppDown", "severity": "critical"}, "pager"),
        ({"alertname": "PostgresDown", "severity": "critical"}, "pager"),
        ({"alertname": "HostDiskSpaceLow", "severity": "critical"}, "pager"),
        ({"alertname": "HostDiskSpaceLow", "severity": "warning"}, "default"),
        ({"alertname": "AppReplicasBelowMinimum", "severity": "warning"}, "default"),
        ({"alertname": "SomethingNew", "severity": "info"}, "default"),
        # An alert someone forgot to label still reaches a human, through the root route.
        ({"alertname": "Unlabelled"}, "default"),
    ],
)
def test_routes(labels: dict[str, str], receiver: str) -> None:
    result = amtool(
        "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *(f"{k}={v}" for k, v in labels.items())
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_every_severity_used_by_rules_has_a_route() -> None:
    severities = set()
    for path in sorted((ALERTMANAGER_CONFIG.parents[1] / "prometheus" / "rules").glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            severities |= {r["labels"]["severity"] for r in group["rules"] if "alert" in r}
    routed = {"critical": "pager", "warning": "default", "info": "default"}
    assert severities <= set(routed), severities
    for severity, receiver in routed.items():
        result = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", f"severity={severity}")
        assert result.stdout.strip() == receiver


def test_inhibition_rules_name_existing_alerts() -> None:
    """A typo in an inhibit rule silently inhibits nothing; catch it here."""
    alerts = {name for name, _ in rule_expressions()}
    config = load_yaml(ALERTMANAGER_CONFIG)
    for rule in config["inhibit_rules"]:
        for matcher in rule.get("source_matchers", []) + rule.get("target_matchers", []):
            if matcher.startswith("alertname"):
                names = matcher.split("=", 1)[1].strip('~"').split("|")
                assert set(names) <= alerts, (matcher, set(names) - alerts)


# --------------------------------------------------------------------------- live Alertmanager
# Each of these talks to a running Alertmanager and webhook logger (processes): marked slow.


@pytest.fixture(scope="module")
def alerting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservabilityStack]:
    stack = ObservabilityStack(workdir=tmp_path_factory.mktemp("alertmanager"))
    try:
        stack.start_alerting()
        yield stack
    finally:
        stack.close()


def alert(name: str, severity: str, **labels: str) -> dict[str, Any]:
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": f"test {name}"},
        "generatorURL": "http://prometheus.invalid/graph",
    }


@pytest.mark.slow
def test_the_alertmanager_under_test_runs_the_shipped_routing(alerting: ObservabilityStack) -> None:
    # The delivery tests below say something about alertmanager.yml only if the Alertmanager they talk
    # to runs its routing and inhibitions: ask it what it loaded. Only the webhook hosts and the
    # grouping timings may differ from the shipped file.
    am, hook = alerting.alertmanager, alerting.webhook
    assert am is not None and hook is not None
    status = requests.get(f"{am.url}/api/v2/status", timeout=10)
    assert status.status_code == 200, status.text
    running = yaml.safe_load(status.json()["config"]["original"])
    shipped = load_yaml(ALERTMANAGER_CONFIG)
    assert running["inhibit_rules"] == shipped["inhibit_rules"]

    def routing(route: dict[str, Any]) -> list[tuple[str, list[str]]]:
        return [(r["receiver"], r.get("matchers", [])) for r in route.get("routes", [])]

    assert running["route"]["receiver"] == shipped["route"]["receiver"]
    assert routing(running["route"]) == routing(shipped["route"])
    urls = [h["url"] for r in running["receivers"] for h in r.get("webhook_configs", [])]
    assert urls and all(url.startswith(hook.url) for url in urls), urls


@pytest.mark.slow
def test_alerts_reach_the_receiver_of_their_severity(alerting: ObservabilityStack) -> None:
    am, hook = alerting.alertmanager, alerting.webhook
    assert am is not None and hook is not None
    run = uuid.uuid4().hex[:8]  # keeps this test's alerts apart from the other tests' in the shared AM
    am.post_alerts(
        [
            alert("Watchdog", "info", run=run),
            alert("BlackboxProbeFailing", "critical", run=run, instance="https://traefik/healthz"),
            alert("BackupStale", "warning", run=run),
        ]
    )
    wait_for(lambda: hook.received("pager", "BlackboxProbeFailing"), 20, "critical alert at the pager receiver")
    wait_for(lambda: hook.received("default", "BackupStale"), 20, "warning alert at the default receiver")
    wait_for(lambda: hook.received("deadman", "Watchdog"), 20, "Watchdog at the dead-man's-switch receiver")
    assert hook.receivers_of("BlackboxProbeFailing") == {"pager"}
    assert hook.receivers_of("BackupStale") == {"default"}
    assert hook.receivers_of("Watchdog") == {"deadman"}


@pytest.mark.slow
def test_app_down_inhibits_symptoms_and_postgres_down_inhibits_db_alerts(alerting: ObservabilityStack) -> None:
    am, hook = alerting.alertmanager, alerting.webhook
    assert am is not None and hook is not None
    run = uuid.uuid4().hex[:8]
    am.post_alerts(
        [
            alert("AppDown", "critical", job="tally-app"),
            alert("AppLatencyP99High", "critical"),
            alert("AppErrorBudgetBurnFast", "critical"),
            alert("AppReplicasBelowMinimum", "warning", job="tally-app"),
            alert("TargetDown", "warning", job="tally-app", instance="10.0.1.2:9200"),
            alert("PostgresDown", "critical", instance="postgres-exporter:9187"),
            alert("PostgresConnectionsNearMax", "warning", instance="postgres-exporter:9187"),
            alert("AppDatabaseErrors", "warning"),
            # Not a symptom of either: must still be delivered.
            alert("TargetDown", "warning", job="node", instance="node-exporter:9100"),
        ],
        run=run,
    )
    wait_for(lambda: hook.received("pager", "AppDown"), 20, "AppDown delivered")
    wait_for(lambda: hook.received("pager", "PostgresDown"), 20, "PostgresDown delivered")
    wait_for(
        lambda: any(a["labels"].get("job") == "node" for a in hook.received("default", "TargetDown")),
        20,
        "unrelated TargetDown delivered",
    )
    inhibited = {a["labels"]["alertname"] for a in am.alerts(filter=f'run="{run}"') if a["status"]["inhibitedBy"]}
    assert inhibited == {
        "AppLatencyP99High",
        "AppErrorBudgetBurnFast",
        "AppReplicasBelowMinimum",
        "TargetDown",
        "PostgresConnectionsNearMax",
        "AppDatabaseErrors",
    }
    for name in inhibited - {"TargetDown"}:
        assert not hook.receivers_of(name), f"{name} was delivered although inhibited"
    assert all(a["labels"].get("job") == "node" for a in hook.received("default", "TargetDown"))


@pytest.mark.slow
def test_critical_inhibits_warning_of_the_same_alert_only(alerting: ObservabilityStack) -> None:
    am, hook = alerting.alertmanager, alerting.webhook
    assert am is not None and hook is not None
    disk = {"instance": "node-exporter:9100", "run": uuid.uuid4().hex[:8]}
    am.post_alerts(
        [
            alert("HostDiskSpaceLow", "critical", mountpoint="/", **disk),
            alert("HostDiskSpaceLow", "warning", mountpoint="/", **disk),
            alert("HostDiskSpaceLow", "warning", mountpoint="/srv", **disk),
        ]
    )
    wait_for(lambda: hook.received("pager", "HostDiskSpaceLow"), 20, "critical disk alert delivered")
    wait_for(lambda: hook.received("default", "HostDiskSpaceLow"), 20, "other mountpoint's warning delivered")
    warnings = hook.received("default", "HostDiskSpaceLow")
    assert {a["labels"]["mountpoint"] for a in warnings} == {"/srv"}
    inhibited = [a["labels"] for a in am.alerts(filter=f'run="{disk["run"]}"') if a["status"]["inhibitedBy"]]
    assert inhibited == [{"alertname": "HostDiskSpaceLow", "severity": "warning", "mountpoint": "/", **disk}]
