"""Run the observability stack natively (no Docker) from the repo's own configuration files.

Prometheus, Alertmanager, the alert-logger webhook (alertmanager/webhook_logger.py) and the
exporters run as real Debian binaries on 127.0.0.1 with free ports. Their configuration is *derived*
from prometheus/prometheus.yml and alertmanager/alertmanager.yml by rewriting targets, URLs and
timings in code, so what is tested is what ships. Used by tests/observability/test_e2e.py and by the
resilience drills (a replica-down alert must fire and resolve).

Every process is started in its own session and stopped by PID (see ``ObservabilityStack.close``).

Typical use (the drills do the same around their own load)::

    stack = ObservabilityStack(workdir=tmp_path)
    try:
        stack.start_alerting()                      # alert-logger + Alertmanager (our routes)
        stack.start_prometheus(
            {"tally-app": ["127.0.0.1:9201", "127.0.0.1:9202"], "alertmanager": [stack.alertmanager.address]},
            for_overrides={"AppReplicasBelowMinimum": "3s"},   # production waits 2m
        )
        since = time.time()
        ...kill a replica...
        wait_for(lambda: stack.webhook.received("default", "AppReplicasBelowMinimum", since=since), 60, "alert")
    finally:
        stack.close()
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
import yaml

from . import REPO_ROOT
from .procs import free_port, port_open, read_log, start_logged, stop_process
from .tools import find_tool

PROMETHEUS_DIR = REPO_ROOT / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
ALERTMANAGER_CONFIG = REPO_ROOT / "alertmanager" / "alertmanager.yml"
WEBHOOK_LOGGER = REPO_ROOT / "alertmanager" / "webhook_logger.py"
BLACKBOX_CONFIG = REPO_ROOT / "blackbox" / "blackbox.yml"
GRAFANA_DASHBOARDS = REPO_ROOT / "grafana" / "dashboards"
SECRETS_INIT = REPO_ROOT / "scripts" / "secrets_init.py"

PROMETHEUS_BIN = "/usr/bin/prometheus"
ALERTMANAGER_BIN = "/usr/bin/prometheus-alertmanager"
POSTGRES_EXPORTER_BIN = "/usr/bin/prometheus-postgres-exporter"
NODE_EXPORTER_BIN = "/usr/bin/prometheus-node-exporter"
BLACKBOX_EXPORTER_BIN = "/usr/bin/prometheus-blackbox-exporter"
# Where the containers find their secret files; natively, a directory of the test's own.
CONTAINER_SECRETS = Path("/run/secrets")


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """One started process, its port and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return read_log(self.log_path)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.process, timeout=15, sig=sig)


def start_service(
    name: str,
    argv: list[str],
    port: int,
    log_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    ready: Callable[[], object] | None = None,
    timeout: float = 30,
) -> Service:
    log_path = log_dir / f"{name}.log"
    process = start_logged(name, argv, log_path, env=env, ready=ready or (lambda: port_open(port)), timeout=timeout)
    return Service(name=name, process=process, port=port, log_path=log_path)


def _http_ok(url: str) -> bool:
    return requests.get(url, timeout=1).status_code == 200


# --------------------------------------------------------------------------- config rewriting


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def prometheus_test_config(
    targets: Mapping[str, list[str]],
    *,
    alertmanager: str | None,
    rule_files: Iterable[str],
    interval: str = "1s",
    blackbox: str | None = None,
    secrets_dir: Path | None = None,
    source: Path = PROMETHEUS_CONFIG,
) -> dict[str, Any]:
    """Our prometheus.yml with each kept job's discovery replaced by static local targets.

    Job names, metrics paths, params and relabelling stay as shipped; jobs absent from ``targets``
    are dropped (their exporters are not running). For the blackbox job ``targets`` holds the
    probed URLs and ``blackbox`` the exporter address that the relabelling points at. A kept job's
    ``password_file`` under /run/secrets/ is read from ``secrets_dir`` instead.
    """
    config: dict[str, Any] = copy.deepcopy(load_yaml(source))
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    config["rule_files"] = list(rule_files)
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    else:
        config.pop("alerting", None)
    kept = []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        if name not in targets:
            continue
        for key in [k for k in job if k.endswith("_sd_configs") or k == "static_configs"]:
            del job[key]
        job["static_configs"] = [{"targets": list(targets[name])}]
        for rule in job.get("relabel_configs", []):
            if rule.get("target_label") == "__address__" and "replacement" in rule:
                if not blackbox:
                    raise ValueError(f"job {name} relabels __address__: pass blackbox=host:port")
                rule["replacement"] = blackbox
        auth = job.get("basic_auth") or {}
        if "password_file" in auth:
            if not secrets_dir:
                raise ValueError(f"job {name} reads {auth['password_file']}: pass secrets_dir")
            auth["password_file"] = str(secrets_dir / Path(auth["password_file"]).relative_to(CONTAINER_SECRETS))
        kept.append(job)
    unknown = set(targets) - {job["job_name"] for job in config["scrape_configs"]}
    if unknown:
        raise ValueError(f"no such scrape jobs in {source}: {sorted(unknown)}")
    config["scrape_configs"] = kept
    return config


def write_rules(dest: Path, for_overrides: Mapping[str, str] | None = None, source: Path = RULES_DIR) -> list[str]:
    """Copy the rule files, shortening ``for:`` of the named alerts (minutes are too long for a test)."""
    dest.mkdir(parents=True, exist_ok=True)
    overrides = dict(for_overrides or {})
    seen: set[str] = set()
    written = []
    for path in sorted(source.glob("*.yml")):
        doc = load_yaml(path)
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in overrides:
                    rule["for"] = overrides[rule["alert"]]
                    seen.add(rule["alert"])
        target = dest / path.name
        target.write_text(yaml.safe_dump(doc, sort_keys=False))
        written.append(str(target))
    missing = set(overrides) - seen
    if missing:
        raise ValueError(f"for_overrides names unknown alerts: {sorted(missing)}")
    return written


def alertmanager_test_config(
    webhook_base: str,
    *,
    group_wait: str = "1s",
    group_interval: str = "1s",
    repeat_interval: str | None = None,
    source: Path = ALERTMANAGER_CONFIG,
) -> dict[str, Any]:
    """Our alertmanager.yml with every webhook pointed at ``webhook_base`` (path kept, so the
    receiver stays identifiable) and the route timings shortened so a test waits seconds.

    group_wait stays above zero on purpose: Alertmanager's inhibitor learns about a source alert
    asynchronously, and a zero wait would notify a target alert posted in the same batch before the
    inhibition applies (production uses 10-30s)."""
    config: dict[str, Any] = copy.deepcopy(load_yaml(source))
    base = urlsplit(webhook_base)
    for receiver in config.get("receivers", []):
        for hook in receiver.get("webhook_configs", []):
            url = urlsplit(hook["url"])
            hook["url"] = urlunsplit((base.scheme, base.netloc, url.path, url.query, ""))

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", group_wait), ("group_interval", group_interval)):
            if key in route or route is config["route"]:
                route[key] = value
        if repeat_interval is not None and ("repeat_interval" in route or route is config["route"]):
            route["repeat_interval"] = repeat_interval
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


def promql_for_test(expr: str, rate_interval: str = "30s", range_: str = "5m") -> str:
    """Substitute Grafana's built-in variables so a dashboard query is plain PromQL."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("${__rate_interval}", rate_interval)
        .replace("$__range", range_)
        .replace("${__range}", range_)
        .replace("$__interval", "5s")
        .replace("${__interval}", "5s")
    )


# --------------------------------------------------------------------------- PromQL inventory


def rule_expressions(rules_dir: Path = RULES_DIR) -> list[tuple[str, str]]:
    """(name, expr) of every recording and alerting rule."""
    found = []
    for path in sorted(rules_dir.glob("*.yml")):
        for group in load_yaml(path)["groups"]:
            for rule in group["rules"]:
                found.append((rule.get("record") or rule["alert"], rule["expr"]))
    return found


def dashboard_expressions(dashboards_dir: Path = GRAFANA_DASHBOARDS) -> list[tuple[str, str]]:
    """(dashboard/panel title, expr) of every query in every dashboard, rows included."""
    found = []
    for path in sorted(dashboards_dir.glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in iter_panels(dashboard.get("panels", [])):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{dashboard['uid']}/{panel.get('title')}/{target.get('refId')}", target["expr"]))
    return found


def iter_panels(panels: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "inf", "nan", "atan2",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a small lexer, enough for our queries)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range / subquery selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if word.lower() in _PROMQL_WORDS or rest.startswith("("):
            continue
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "$"):
            continue  # 5m, 1e3, $__range leftovers
        names.add(word)
    return names


# --------------------------------------------------------------------------- clients


@dataclass
class Prometheus(Service):
    def query(self, expr: str) -> dict[str, Any]:
        """Instant query; raises on a parse or evaluation error (HTTP 400/422)."""
        response = requests.post(f"{self.url}/api/v1/query", data={"query": expr}, timeout=10)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise AssertionError(f"query failed ({response.status_code}): {expr}\n{body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    def samples(self, expr: str) -> list[dict[str, Any]]:
        data = self.query(expr)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else []
        if data["resultType"] == "scalar":
            result = [{"metric": {}, "value": data["result"]}]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = requests.get(f"{self.url}/api/v1/targets", timeout=5).json()["data"][
            "activeTargets"
        ]
        return active

    def rules(self) -> list[dict[str, Any]]:
        groups = requests.get(f"{self.url}/api/v1/rules", timeout=5).json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def firing(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = requests.get(f"{self.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        return [a for a in alerts if a["state"] == "firing"]


@dataclass
class Alertmanager(Service):
    def post_alerts(self, alerts: list[dict[str, Any]], **extra_labels: str) -> None:
        """Post alerts as Prometheus does; ``extra_labels`` are added to every alert."""
        alerts = [a | {"labels": a["labels"] | extra_labels} for a in alerts]
        response = requests.post(f"{self.url}/api/v2/alerts", json=alerts, timeout=5)
        assert response.status_code == 200, response.text

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        params = {"active": "true", "silenced": "true", "inhibited": "true", "unprocessed": "true"} | filters
        result: list[dict[str, Any]] = requests.get(f"{self.url}/api/v2/alerts", params=params, timeout=5).json()
        return result


@dataclass
class WebhookLogger(Service):
    """alertmanager/webhook_logger.py; its stdout (one JSON line per notification) is the log file."""

    def notifications(self) -> list[dict[str, Any]]:
        records = []
        for line in self.log().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "receiver" in record:
                records.append(record)
        return records

    def received(
        self, receiver: str, alertname: str, status: str = "firing", since: float = 0.0
    ) -> list[dict[str, Any]]:
        """Alerts named ``alertname`` delivered to ``receiver`` with the given alert status,
        in notifications received after Unix time ``since``."""
        return [
            alert
            for record in self.notifications()
            if record["receiver"] == receiver and record["ts"] >= since
            for alert in record["alerts"]
            if alert["labels"].get("alertname") == alertname and alert["status"] == status
        ]

    def receivers_of(self, alertname: str) -> set[str]:
        return {
            record["receiver"]
            for record in self.notifications()
            for alert in record["alerts"]
            if alert["labels"].get("alertname") == alertname
        }


# --------------------------------------------------------------------------- starters


def start_webhook_logger(workdir: Path) -> WebhookLogger:
    port = free_port()
    service = start_service(
        "webhook-logger",
        [sys.executable, "-u", str(WEBHOOK_LOGGER), "--listen", f"127.0.0.1:{port}"],
        port,
        workdir,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"),
    )
    return WebhookLogger(**vars(service))


def start_alertmanager(workdir: Path, config: Mapping[str, Any], extra_args: Sequence[str] = ()) -> Alertmanager:
    find_tool(ALERTMANAGER_BIN)
    directory = workdir / "alertmanager"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "alertmanager.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port()
    service = start_service(
        "alertmanager",
        [
            ALERTMANAGER_BIN,
            f"--config.file={config_path}",
            f"--storage.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",  # single instance: no gossip port
            *extra_args,
        ],
        port,
        workdir,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )
    return Alertmanager(**vars(service))


def start_prometheus(
    workdir: Path,
    config: Mapping[str, Any],
    *,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Prometheus:
    """``env`` is added to the inherited environment (external labels may expand it: expand-external-labels)."""
    find_tool(PROMETHEUS_BIN)
    directory = workdir / "prometheus"
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "prometheus.yml"
    port = port or free_port()
    config = copy.deepcopy(dict(config))
    for job in config.get("scrape_configs", []):
        if job["job_name"] == "prometheus":
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    service = start_service(
        "prometheus",
        [
            PROMETHEUS_BIN,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--storage.tsdb.retention.time=1h",
            # Firing alerts are re-sent at most this often; the default (1m) would slow the test.
            "--rules.alert.resend-delay=1s",
            *extra_args,
        ],
        port,
        workdir,
        env={**os.environ, **env} if env else None,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/-/ready"),
    )
    return Prometheus(**vars(service))


def start_postgres_exporter(workdir: Path, dsn_url: str = "", environment: Mapping[str, str] | None = None) -> Service:
    """On ``dsn_url`` (DATA_SOURCE_NAME) or on what ``environment`` says (DATA_SOURCE_URI, _USER, _PASS_FILE)."""
    find_tool(POSTGRES_EXPORTER_BIN)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        **({"DATA_SOURCE_NAME": dsn_url} if dsn_url else {}),
        **(environment or {}),
    }
    return start_service(
        "postgres-exporter",
        [POSTGRES_EXPORTER_BIN, f"--web.listen-address=127.0.0.1:{port}"],
        port,
        workdir,
        env=env,
        # As compose's health check: serving, whether or not the database answers (a scrape of /metrics
        # tries it, which takes its time when it fails).
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/"),
    )


def start_node_exporter(workdir: Path) -> Service:
    find_tool(NODE_EXPORTER_BIN)
    port = free_port()
    collectors = ["cpu", "meminfo", "filesystem", "loadavg", "diskstats", "netdev"]
    return start_service(
        "node-exporter",
        [
            NODE_EXPORTER_BIN,
            f"--web.listen-address=127.0.0.1:{port}",
            # Only what our rules and dashboards read: faster scrapes, no noise from the test box.
            "--collector.disable-defaults",
            *[f"--collector.{name}" for name in collectors],
        ],
        port,
        workdir,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/metrics"),
    )


def write_secrets(directory: Path) -> Path:
    """The stack's secret files as secrets-init makes them (scripts/secrets_init.py: generated values and the
    derived files), in ``directory``, which stands in for /run/secrets."""
    directory.mkdir(parents=True, exist_ok=True)
    job = subprocess.run(
        [sys.executable, str(SECRETS_INIT), "--import-dir", str(directory / "none"), "--store", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if job.returncode != 0:
        raise RuntimeError(f"secrets_init.py failed: {job.stderr}")
    return directory


def start_blackbox_exporter(workdir: Path, config: Path = BLACKBOX_CONFIG, secrets_dir: Path | None = None) -> Service:
    """With ``secrets_dir`` (write_secrets) behind basic auth as in the stack: its blackbox_web_config."""
    find_tool(BLACKBOX_EXPORTER_BIN)
    port = free_port()
    argv = [BLACKBOX_EXPORTER_BIN, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{port}"]
    auth = None
    if secrets_dir:
        argv.append(f"--web.config.file={secrets_dir / 'blackbox_web_config'}")
        auth = ("prometheus", (secrets_dir / "blackbox_password").read_text())
    return start_service(
        "blackbox-exporter",
        argv,
        port,
        workdir,
        ready=lambda: requests.get(f"http://127.0.0.1:{port}/-/healthy", auth=auth, timeout=1).status_code == 200,
    )


@dataclass
class ObservabilityStack:
    """Prometheus + Alertmanager + webhook logger (+ exporters) started together; ``close`` stops all."""

    workdir: Path
    webhook: WebhookLogger | None = None
    alertmanager: Alertmanager | None = None
    prometheus: Prometheus | None = None
    exporters: dict[str, Service] = field(default_factory=dict)
    # The stand-in for /run/secrets when a started service reads a secret (write_secrets).
    secrets_dir: Path | None = None

    def start_alerting(self, group_wait: str = "1s", group_interval: str = "1s") -> None:
        self.webhook = start_webhook_logger(self.workdir)
        config = alertmanager_test_config(self.webhook.url, group_wait=group_wait, group_interval=group_interval)
        self.alertmanager = start_alertmanager(self.workdir, config)

    def start_prometheus(
        self,
        targets: Mapping[str, list[str]],
        *,
        for_overrides: Mapping[str, str] | None = None,
        interval: str = "1s",
    ) -> Prometheus:
        rule_files = write_rules(self.workdir / "rules", for_overrides)
        blackbox = self.exporters.get("blackbox")
        config = prometheus_test_config(
            targets,
            alertmanager=self.alertmanager.address if self.alertmanager else None,
            rule_files=rule_files,
            interval=interval,
            blackbox=blackbox.address if blackbox else None,
            secrets_dir=self.secrets_dir,
        )
        self.prometheus = start_prometheus(self.workdir, config)
        return self.prometheus

    def services(self) -> list[Service]:
        started: list[Service | None] = [self.prometheus, self.alertmanager, self.webhook, *self.exporters.values()]
        return [service for service in started if service is not None]

    def close(self) -> None:
        for service in self.services():
            service.stop()

    def logs(self) -> str:
        return "\n".join(f"===== {s.name}\n{s.log()[-3000:]}" for s in self.services())


__all__ = [
    "Alertmanager",
    "ObservabilityStack",
    "Prometheus",
    "Service",
    "WebhookLogger",
    "alertmanager_test_config",
    "dashboard_expressions",
    "metric_names",
    "prometheus_test_config",
    "promql_for_test",
    "rule_expressions",
    "start_alertmanager",
    "start_blackbox_exporter",
    "write_secrets",
    "start_node_exporter",
    "start_postgres_exporter",
    "start_prometheus",
    "start_webhook_logger",
    "write_rules",
]
