"""The stack on a real Docker Engine, brought up from nothing with `docker compose up -d --wait` (issue 14).

Read-only checks of the running stack first (this module), then the ones that stop, scale and redeploy
(test_2_operations.py). One stack serves the whole session (conftest.py).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from harness.procs import wait_until
from tests.e2e import client
from tests.e2e.engine import LEFT_OUT, Stack
from tests.stack.stackutil import REPO, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def services() -> dict[str, dict[str, Any]]:
    model = render(files=(REPO / "compose.yaml",))
    return {name: svc for name, svc in model["services"].items() if name not in LEFT_OUT}


def host_get(stack: Stack, path: str = "/", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    return client.get("127.0.0.1", stack.https_port, path, headers)


def stats(stack: Stack) -> dict[str, Any]:
    status, _, body = host_get(stack, "/api/stats")
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def visit_figure(body: str) -> int:
    match = re.search(r'class="visit-figure">(\d+)</span>', body)
    assert match, body[:2000]
    return int(match.group(1))


# --- 1. from nothing -----------------------------------------------------------------------------------------


def test_compose_up_wait_succeeds(stack: Stack) -> None:
    assert stack.up is not None
    assert stack.up.returncode == 0, stack.up.stderr


def test_every_service_is_healthy_and_every_job_exited_0(stack: Stack) -> None:
    expected = services()
    by_service: dict[str, list[dict[str, Any]]] = {}
    for container in stack.ps():
        by_service.setdefault(container["Service"], []).append(container)
    assert set(by_service) == set(expected)
    for name, svc in expected.items():
        for container in by_service[name]:
            if svc.get("restart") == "no":
                assert (container["State"], container["ExitCode"]) == ("exited", 0), (name, container)
            else:
                assert (container["State"], container["Health"]) == ("running", "healthy"), (name, container)
    assert len(by_service["app"]) == 2


def test_published_ports_are_ipv4_only(stack: Stack) -> None:
    """compose/edge.yaml's own `ports` (PUBLISH_ADDRESS from the suite's env file): IPv4 bindings only, no
    [::] listener, which would hand every IPv6 visitor to Traefik as one gateway address."""
    traefik = stack.container_ids("traefik")[0]
    bindings = stack.inspect(traefik)["NetworkSettings"]["Ports"]
    published = {port: sorted((b["HostIp"], int(b["HostPort"])) for b in bindings[port] or []) for port in bindings}
    assert published["80/tcp"] == [("127.0.0.1", stack.http_port)], published
    assert published["443/tcp"] == [("127.0.0.1", stack.https_port)], published
    assert all(host and ":" not in host for binds in published.values() for host, _ in binds), published
    for port in (stack.http_port, stack.https_port):
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.settimeout(2)
            assert probe.connect_ex(("::1", port)) != 0, f"something listens on [::1]:{port}"


# --- 2. HTTPS through Traefik --------------------------------------------------------------------------------


def handshake(stack: Stack, version: ssl.TLSVersion) -> str:
    """The negotiated protocol, or the error."""
    ctx = client.context()
    ctx.minimum_version = ctx.maximum_version = version
    # Let this client offer the old protocols at all; refusing them is the server's job.
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    conn = http.client.HTTPSConnection("127.0.0.1", stack.https_port, context=ctx, timeout=10)
    try:
        conn.connect()
        assert conn.sock is not None
        return str(conn.sock.version())  # type: ignore[attr-defined]
    except ssl.SSLError as exc:
        return f"refused: {exc}"
    finally:
        conn.close()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_2_and_1_3_only(stack: Stack) -> None:
    assert handshake(stack, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    assert handshake(stack, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        answer = handshake(stack, old)
        assert answer.startswith("refused"), answer
        # Refused by Traefik, not by this client's own OpenSSL policy.
        assert "NO_PROTOCOLS_AVAILABLE" not in answer, answer


def test_http_redirects_to_https_on_the_published_port(stack: Stack) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", stack.http_port, timeout=10)
    conn.request("GET", "/some/path?q=1", headers={"Host": client.DOMAIN})
    response = conn.getresponse()
    conn.close()
    assert response.status in (301, 308)
    assert response.getheader("Location") == f"https://{client.DOMAIN}:{stack.https_port}/some/path?q=1"


def test_security_headers(stack: Stack) -> None:
    status, headers, _ = host_get(stack, "/healthz")
    assert status == 200
    lower = {k.lower(): v for k, v in headers.items()}
    # Two years with subdomains; preload stays the operator's opt-in (docs/security.md).
    assert lower["strict-transport-security"] == "max-age=63072000; includeSubDomains"
    assert lower["x-content-type-options"] == "nosniff"
    assert lower["x-frame-options"] == "DENY"
    assert lower["referrer-policy"] == "strict-origin-when-cross-origin"
    assert "camera=()" in lower["permissions-policy"]
    assert "gunicorn" not in lower.get("server", "").lower()


def test_rate_limit_answers_429_per_client(stack: Stack) -> None:
    # Until the first 429, bounded: a slow machine only takes longer to empty the bucket.
    burst = stack.visit(
        "burst", "--path", "/healthz", "--count", "5000", "--concurrency", "8", "--keep-alive", "--until-status", "429"
    )["statuses"]
    assert set(burst) <= {200, 429}, sorted(set(burst))
    assert 429 in burst
    # Traefik's burst is 100: at least those pass before the limiter answers 429.
    assert burst.count(200) >= 100
    # Another client's bucket is its own.
    assert stack.visit("calm", "--path", "/healthz")["statuses"] == [200]


# --- 3. counting through Traefik -----------------------------------------------------------------------------


def test_fifty_visits_from_one_client(stack: Stack) -> None:
    result = stack.visit("solo", "--count", "50")
    assert result["statuses"] == [200] * 50
    assert visit_figure(result["last_body"]) == 50
    assert "50 times" in re.sub(r"<[^>]+>", "", result["last_body"])


def test_distinct_clients_are_distinct_visitors(stack: Stack) -> None:
    clients = [f"visitor-{i}" for i in range(5)]
    for name in clients:
        stack.client(name)
    before = stats(stack)["total_visitors"]
    for name in clients:
        assert stack.visit(name)["statuses"] == [200]
    assert stats(stack)["total_visitors"] == before + len(clients)


def test_forged_forwarding_headers_never_make_a_visitor(stack: Stack) -> None:
    first = stack.visit("forger")
    assert visit_figure(first["last_body"]) == 1
    before = stats(stack)["total_visitors"]
    forged = [
        "X-Forwarded-For: 203.0.113.7",
        "X-Forwarded-For: 203.0.113.8, 198.51.100.9",
        "Forwarded: for=198.51.100.10",
        "X-Real-IP: 192.0.2.11",
        "X-Forwarded-For: not-an-address",
    ]
    for number, header in enumerate(forged, start=2):
        result = stack.visit("forger", "--header", header)
        assert result["statuses"] == [200], (header, result)
        # Counted for the real client: the forger's own count goes up, nobody new appears.
        assert visit_figure(result["last_body"]) == number, header
    assert stats(stack)["total_visitors"] == before


def replica_visits(stack: Stack) -> dict[str, float]:
    """tally_visits_total of each app replica, read from its own metrics port."""
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9200/metrics', timeout=5).read().decode())"
    result = {}
    for container in stack.container_ids("app"):
        text = stack.engine.docker("exec", container, "python", "-c", script).stdout
        values = re.findall(r"^tally_visits_total(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.MULTILINE)
        result[container] = sum(float(v) for v in values)
    return result


def test_requests_are_spread_over_the_replicas(stack: Stack) -> None:
    before = replica_visits(stack)
    assert len(before) == 2
    assert stack.visit("spreader", "--count", "40")["statuses"] == [200] * 40
    after = replica_visits(stack)
    gained = {c: after[c] - before[c] for c in before}
    assert sum(gained.values()) == 40, gained
    assert all(n > 0 for n in gained.values()), gained


# --- 4. Prometheus and Alertmanager --------------------------------------------------------------------------


def prometheus_api(stack: Stack, path: str) -> Any:
    out = stack.exec("prometheus", "wget", "-q", "-O", "-", f"http://127.0.0.1:9090/api/v1/{path}").stdout
    return json.loads(out)["data"]


def test_every_target_is_up(stack: Stack) -> None:
    def down() -> list[str]:
        targets = prometheus_api(stack, "targets?state=active")["activeTargets"]
        jobs = {t["labels"]["job"] for t in targets}
        assert {"tally-app", "traefik", "postgres", "node", "alertmanager", "blackbox-https"} <= jobs
        return [
            f"{t['labels']['job']} {t['scrapeUrl']}: {t['health']} {t['lastError']}"
            for t in targets
            if t["health"] != "up" and not any(name in t["scrapeUrl"] for name in LEFT_OUT)
        ]

    wait_until(lambda: not down(), timeout=120, interval=2, message="every scrape target up")
    app_targets = [
        t for t in prometheus_api(stack, "targets?state=active")["activeTargets"] if t["labels"]["job"] == "tally-app"
    ]
    assert len(app_targets) == 2


def test_backup_streams_wal_and_its_metrics_reach_prometheus_through_node_exporter(stack: Stack) -> None:
    """The sidecar's textfile (backup-metrics volume) read by node-exporter: WAL streaming over the
    replication line of postgres/pg_hba.conf as the tally_backup role (docs/backup-restore.md)."""

    def streaming() -> bool:
        result = prometheus_api(stack, "query?query=tally_backup_wal_streaming")["result"]
        return [sample["metric"]["job"] for sample in result if sample["value"][1] == "1"] == ["node"]

    wait_until(streaming, timeout=180, interval=3, message="tally_backup_wal_streaming 1 from the node job")


def test_every_rule_group_is_healthy(stack: Stack) -> None:
    def unhealthy() -> list[str]:
        groups = prometheus_api(stack, "rules")["groups"]
        assert groups
        return [
            f"{g['name']}/{r['name']}: {r['health']} {r.get('lastError', '')}"
            for g in groups
            for r in g["rules"]
            if r["health"] != "ok"
        ]

    wait_until(lambda: not unhealthy(), timeout=120, interval=2, message="every rule evaluated ok")


def test_watchdog_reaches_the_alert_logger(stack: Stack) -> None:
    wait_until(
        lambda: '"Watchdog"' in stack.logs("alert-logger"), timeout=240, interval=3, message="Watchdog delivered"
    )
    # With RUNBOOK_BASE_URL unset, the runbook link is the runbook's path in the checkout (docs/observability.md).
    records = [json.loads(line) for line in stack.logs("alert-logger").splitlines() if line.startswith("{")]
    links = {a["runbook_url"] for r in records for a in r.get("alerts", []) if a["labels"]["alertname"] == "Watchdog"}
    assert links == {"./docs/runbooks/Watchdog.md"}
    assert (REPO / links.pop()).is_file()


# --- 8. slow clients -----------------------------------------------------------------------------------------


def test_half_open_connections_do_not_block_other_visitors(stack: Stack) -> None:
    """200 connections that complete TLS and then send only part of a request head, held open while another
    client visits: Traefik must keep serving it."""
    held: list[ssl.SSLSocket] = []

    def half_open() -> ssl.SSLSocket:
        raw = socket.create_connection(("127.0.0.1", stack.https_port), timeout=10)
        tls = client.context().wrap_socket(raw, server_hostname=client.DOMAIN)
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {client.DOMAIN}\r\nX-Slow: ".encode())
        return tls

    try:
        with ThreadPoolExecutor(20) as pool:
            for future in [pool.submit(half_open) for _ in range(200)]:
                held.append(future.result())
        result = stack.visit("patient", "--count", "20", "--concurrency", "4")
        assert result["statuses"] == [200] * 20
    finally:
        for tls in held:
            tls.close()
