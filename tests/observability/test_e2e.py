"""End to end on real binaries, no Docker: PostgreSQL, two gunicorn replicas of the app,
postgres_exporter, node_exporter, blackbox_exporter, Prometheus with our rules and scrape jobs
(targets rewritten to local ports), Alertmanager with our routing (webhooks rewritten to the
alert-logger). Proves that every query we ship returns data and that a lost replica pages.

Not run here, hence on the explicit allowlist below: cAdvisor and Traefik (need a Docker host) and
the backup sidecar (issue 5's container). Their queries must still parse.
"""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.observability import (
    ObservabilityStack,
    Prometheus,
    dashboard_expressions,
    metric_names,
    promql_for_test,
    rule_expressions,
    start_blackbox_exporter,
    start_node_exporter,
    start_postgres_exporter,
    write_secrets,
)
from harness.postgres import PostgresServer
from harness.procs import wait_for, wait_until

pytestmark = pytest.mark.slow

# Metric prefixes whose exporters cannot run in this environment. Each entry says why.
NOT_RUN_HERE = {
    "container_": "cAdvisor reads the Docker engine's cgroups; there is no Docker engine here",
    "traefik_": "Traefik runs only in the compose stack",
    "tally_backup_": "served by the backup sidecar container (issue 5)",
    "swarm_manager_": "a Swarm manager's dockerd serves them; tests/e2e/test_9_swarm.py scrapes and alerts on them",
}
# The replica alert waits 2m in production; 3s keeps the test short. Nothing else is rewritten.
FOR_OVERRIDES = {"AppReplicasBelowMinimum": "3s"}
# Shortest window that still holds several 1s-scrape samples.
RATE_INTERVAL = "15s"
ALERT_DEADLINE = 60  # seconds from the replica's death to the notification at the webhook


def needs_absent_exporter(expr: str) -> bool:
    return any(name.startswith(tuple(NOT_RUN_HERE)) for name in metric_names(expr))


class _HealthzHandler(http.server.BaseHTTPRequestHandler):
    """Stands in for Traefik: TLS with a self-signed certificate, routes only `Host: localhost`."""

    def do_GET(self) -> None:  # noqa: N802
        ok = self.headers.get("Host") == "localhost" and self.path == "/healthz"
        body = b'{"status":"ok"}' if ok else b"404 page not found"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@dataclass
class TLSStub:
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/healthz"

    @classmethod
    def start(cls, workdir: Path) -> TLSStub:
        key, cert = workdir / "tls.key", workdir / "tls.crt"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HealthzHandler)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class E2E:
    workdir: Path
    pg: PostgresServer
    database_url: str
    replicas: list[Gunicorn]
    envs: list[dict[str, str]]
    stack: ObservabilityStack
    visits: int

    @property
    def prometheus(self) -> Prometheus:
        assert self.stack.prometheus is not None
        return self.stack.prometheus


def drive_traffic(replicas: list[Gunicorn], pg: PostgresServer, prometheus: Prometheus) -> int:
    def normal_rounds(count: int) -> int:
        for _ in range(count):
            for replica in replicas:
                assert requests.get(replica.url + "/", timeout=5).status_code == 200
                for path, status in (("/api/stats", 200), ("/readyz", 200), ("/version", 200), ("/nope", 404)):
                    assert requests.get(replica.url + path, timeout=5).status_code == status
        return count * len(replicas)

    def failed_visits() -> None:
        # The database refuses the app's connections: 503s and tally_db_errors_total, for the panels
        # and ratios that only have data once something went wrong. (A broken schema is a 500 now: a
        # bug, not an outage.)
        pg.execute("ALTER DATABASE tally ALLOW_CONNECTIONS false")
        pg.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = 'tally' AND pid <> pg_backend_pid()"
        )
        try:
            for replica in replicas:
                assert requests.get(replica.url + "/", timeout=5).status_code == 503
        finally:
            pg.execute("ALTER DATABASE tally ALLOW_CONNECTIONS true")

    visits = normal_rounds(20)
    # A labelled counter is born at its first increment, and rate() cannot see the step from
    # "absent" to 1. Fail once, let Prometheus scrape the new series, then fail again.
    failed_visits()
    for query in ('flask_http_request_total{status="503"}', "tally_db_errors_total"):
        wait_for(lambda q=query: prometheus.samples(f"count({q}) > 0"), 15, f"Prometheus to scrape {query}")
    failed_visits()
    return visits + normal_rounds(20)


@pytest.fixture(scope="module")
def e2e(tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    workdir = tmp_path_factory.mktemp("obs-e2e")
    # Our own server rather than the shared pg_server: the database must be named `tally` as in
    # compose (the PostgreSQL dashboard filters on it) and the test breaks its schema on purpose.
    pg = PostgresServer.create(max_connections=50)
    # Blackbox behind basic auth, Prometheus with the password file: as in the stack (secrets-init's files).
    stack = ObservabilityStack(workdir=workdir, secrets_dir=write_secrets(workdir / "secrets"))
    replicas: list[Gunicorn] = []
    tls: TLSStub | None = None
    try:
        database_url = pg.create_database("tally")
        migrated = migrate(database_url, workdir)
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        envs = [
            base_env(
                database_url, workdir, PROMETHEUS_MULTIPROC_DIR=str(workdir / f"multiproc-{i}"), WEB_CONCURRENCY="2"
            )
            for i in range(2)
        ]
        # Started together and then awaited: gunicorn boots take seconds each.
        replicas = [run_gunicorn(env, workdir / f"gunicorn-{i}.log", wait=False) for i, env in enumerate(envs)]
        for replica in replicas:
            wait_until(lambda r=replica: r.process.poll() is not None or r.healthy(), 30, message="gunicorn /healthz")
            assert replica.process.poll() is None, replica.log()
        # Restarts must come back on the same ports: Prometheus' targets are fixed.
        envs = [
            env | {"PORT": str(g.port), "METRICS_PORT": str(g.metrics_port)}
            for env, g in zip(envs, replicas, strict=True)
        ]
        stack.exporters["postgres"] = start_postgres_exporter(
            workdir, f"postgresql://postgres@127.0.0.1:{pg.port}/tally?sslmode=disable"
        )
        stack.exporters["node"] = start_node_exporter(workdir)
        stack.exporters["blackbox"] = start_blackbox_exporter(workdir, secrets_dir=stack.secrets_dir)
        tls = TLSStub.start(workdir)
        stack.start_alerting()
        assert stack.alertmanager is not None
        stack.start_prometheus(
            {
                "tally-app": [f"127.0.0.1:{g.metrics_port}" for g in replicas],
                "postgres": [stack.exporters["postgres"].address],
                "node": [stack.exporters["node"].address],
                "blackbox-https": [tls.url],
                "alertmanager": [stack.alertmanager.address],
                "prometheus": [],
            },
            for_overrides=FOR_OVERRIDES,
        )
        prometheus = stack.prometheus
        assert prometheus is not None
        try:
            wait_for(lambda: prometheus.samples("count(up == 1) == 7"), 15, "a first scrape of every target")
        except AssertionError:
            print([(t["scrapeUrl"], t["health"], t["lastError"]) for t in prometheus.targets()])
            raise
        visits = drive_traffic(replicas, pg, prometheus)
        run = E2E(workdir, pg, database_url, replicas, envs, stack, visits)
        # Scrapes and rule evaluations run every second; wait until they have seen the traffic.
        for condition in (
            f"sum(tally_visits_total) >= {visits}",
            "tally:http_5xx_ratio:rate5m > 0",
            f"sum(rate(tally_visits_total[{RATE_INTERVAL}])) > 0",
            "probe_success == 1",
        ):
            wait_for(lambda q=condition: run.prometheus.samples(q), 30, f"Prometheus to see {condition}")
        yield run
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.close()
        for replica in replicas:
            replica.stop()
        if tls:
            tls.stop()
        pg.destroy()


def all_expressions() -> list[tuple[str, str, str]]:
    rules = [("rule", name, expr) for name, expr in rule_expressions()]
    dashboards = [("dashboard", where, expr) for where, expr in dashboard_expressions()]
    return rules + dashboards


def test_every_metric_named_in_a_dashboard_or_rule_exists(e2e: E2E) -> None:
    names = set().union(*(metric_names(expr) for _, _, expr in all_expressions()))
    assert {"flask_http_request_total", "tally_visits_total", "pg_up", "node_cpu_seconds_total"} <= names
    missing = sorted(
        name
        for name in names
        if not name.startswith(tuple(NOT_RUN_HERE)) and not e2e.prometheus.samples(f"count({name})")
    )
    assert missing == [], f"metrics used by rules/dashboards that nothing exports: {missing}"


def test_every_expression_parses_and_returns_data(e2e: E2E) -> None:
    empty = []
    for kind, where, expr in all_expressions():
        query = promql_for_test(expr, rate_interval=RATE_INTERVAL)
        result = e2e.prometheus.samples(query)  # raises on a parse or evaluation error
        is_alert_condition = kind == "rule" and not where.count(":")
        if not result and not is_alert_condition and not needs_absent_exporter(expr):
            empty.append(f"{kind} {where}: {query}")
    assert empty == [], "queries without data:\n" + "\n".join(empty)


def test_prometheus_evaluates_every_rule_without_error(e2e: E2E) -> None:
    rules = e2e.prometheus.rules()
    assert len(rules) == len(rule_expressions())
    broken = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert broken == []
    # Alert conditions are silent on a healthy stack, except the heartbeat.
    firing = {a["labels"]["alertname"] for a in e2e.prometheus.firing()}
    assert firing == {"Watchdog"}, firing


def test_targets_are_up_per_job(e2e: E2E) -> None:
    up: dict[str, list[str]] = {}
    for target in e2e.prometheus.targets():
        up.setdefault(target["labels"]["job"], []).append(target["health"])
    assert up == {
        "tally-app": ["up", "up"],
        "postgres": ["up"],
        "node": ["up"],
        "blackbox-https": ["up"],
        "alertmanager": ["up"],
        "prometheus": ["up"],
    }


def test_blackbox_module_probes_a_self_signed_tls_endpoint(e2e: E2E) -> None:
    [sample] = e2e.prometheus.samples("probe_ssl_earliest_cert_expiry - time()")
    assert 28 * 86400 < float(sample["value"][1]) <= 30 * 86400


def test_blackbox_serves_only_prometheus(e2e: E2E) -> None:
    """/probe makes the exporter fetch any URL it is given: without blackbox_password, nothing (Prometheus's
    probe is up with it: test_targets_are_up_per_job)."""
    blackbox = e2e.stack.exporters["blackbox"]
    assert e2e.stack.secrets_dir is not None
    password = (e2e.stack.secrets_dir / "blackbox_password").read_text()
    probe = f"{blackbox.url}/probe?module=https_2xx_selfsigned&target={e2e.prometheus.url}/-/healthy"
    for url in (probe, f"{blackbox.url}/metrics", f"{blackbox.url}/-/healthy"):
        assert requests.get(url, timeout=5).status_code == 401, url
        assert requests.get(url, auth=("prometheus", password + "x"), timeout=5).status_code == 401, url
        assert requests.get(url, auth=("admin", password), timeout=5).status_code == 401, url
        assert requests.get(url, auth=("prometheus", password), timeout=5).status_code == 200, url


def test_watchdog_reaches_the_dead_mans_switch(e2e: E2E) -> None:
    hook = e2e.stack.webhook
    assert hook is not None
    wait_for(lambda: hook.received("deadman", "Watchdog"), 30, "Watchdog at the deadman receiver")
    assert hook.receivers_of("Watchdog") == {"deadman"}


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def test_app_metrics_count_what_happened(e2e: E2E) -> None:
    """The numbers behind the panels are right, not just present."""
    [visits] = e2e.prometheus.samples("sum(tally_visits_total)")
    assert _value(visits) == e2e.visits
    [new] = e2e.prometheus.samples("sum(tally_new_visitors_total)")
    assert _value(new) == 1  # every request came from 127.0.0.1
    [errors] = e2e.prometheus.samples('sum(tally_db_errors_total{operation="visit"})')
    assert _value(errors) == 2 * len(e2e.replicas)


def test_losing_a_replica_fires_the_alert_and_restart_resolves_it(e2e: E2E) -> None:
    hook = e2e.stack.webhook
    assert hook is not None
    # Let the replica count settle first: right after start-up Prometheus may evaluate the rule
    # before both replicas were scraped, and with a 3s `for:` that blip can fire and resolve.
    wait_for(lambda: e2e.prometheus.samples("tally:app_replicas_up:sum == 2"), 15, "two replicas up")
    wait_for(
        lambda: (
            not e2e.prometheus.firing() or {a["labels"]["alertname"] for a in e2e.prometheus.firing()} == {"Watchdog"}
        ),
        15,
        "only Watchdog firing",
    )
    since = time.time()
    e2e.replicas[1].stop()
    _, fired_after = wait_for(
        lambda: hook.received("default", "AppReplicasBelowMinimum", "firing", since=since),
        ALERT_DEADLINE,
        "AppReplicasBelowMinimum at the webhook",
    )
    alert = hook.received("default", "AppReplicasBelowMinimum", "firing", since=since)[0]
    assert alert["labels"]["severity"] == "warning" and alert["labels"]["job"] == "tally-app"
    assert "Only 1 healthy" in alert["summary"]
    # One replica is left: the site is degraded, not down.
    assert "AppDown" not in {a["labels"]["alertname"] for a in e2e.prometheus.firing()}

    since = time.time()
    e2e.replicas[1] = run_gunicorn(e2e.envs[1], e2e.workdir / "gunicorn-1-restarted.log")
    _, resolved_after = wait_for(
        lambda: hook.received("default", "AppReplicasBelowMinimum", "resolved", since=since),
        ALERT_DEADLINE,
        "AppReplicasBelowMinimum resolved at the webhook",
    )
    print(f"replica alert: fired {fired_after:.1f}s after stop, resolved {resolved_after:.1f}s after restart")
