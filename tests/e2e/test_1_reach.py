"""Least privilege on the running stack (issue 16): process limits, who reaches which port, Grafana's
router, the page's Content-Security-Policy in a real browser.

Read-only but for the Grafana allow-list test, which recreates Grafana and puts it back as it was.
"""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.procs import free_port, wait_until
from tests.e2e import client
from tests.e2e.engine import Stack
from tests.e2e.test_1_stack import prometheus_api, services, stats, visit_figure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# Every metrics port of the stack but Prometheus's own: only Prometheus may reach them. Traefik's :8082 and
# the app's :9200 answer 403 to everyone but Prometheus and loopback, blackbox's :9115 401 to everyone without
# Prometheus's password (test_metrics_listeners_refuse_their_network_neighbours, test_blackbox_serves_only_
# prometheus). Each exporter meets Prometheus on a network of its own: it reaches no other exporter.
METRICS = ("node-exporter:9100", "postgres-exporter:9187", "traefik:8082", "app:9200", "blackbox:9115")
STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})")


def test_every_container_runs_with_its_pids_limit(stack: Stack) -> None:
    """CIS 5.28 on the engine: the limit compose sets is the one each container runs with."""
    expected = services()
    seen = set()
    for container in stack.ps():
        limits = expected[container["Service"]].get("deploy", {}).get("resources", {}).get("limits", {})
        pids = stack.inspect(container["ID"])["HostConfig"]["PidsLimit"]
        assert pids == int(limits["pids"]) and pids > 0, (container["Service"], pids)
        seen.add(container["Service"])
    assert seen == set(expected)


def ip_on(stack: Stack, container: str, network: str) -> str:
    address: str = stack.inspect(container)["NetworkSettings"]["Networks"][stack.network(network)]["IPAddress"]
    assert address, (container, network)
    return address


def wget(stack: Stack, service: str, url: str) -> bool:
    """Whether `service`'s own container gets an answer from `url`. The stand-ins carry GNU wget (one try, or
    it retries a timeout 20 times); the upstream images busybox's."""
    result = stack.exec(service, "wget", "-q", "-t", "1", "-T", "3", "-O", "/dev/null", url, check=False, timeout=60)
    return result.returncode == 0


def http_from_postgres(stack: Stack, address: str, path: str) -> str:
    """The status line a GET of `address:8000` gets from inside the postgres container (bash's /dev/tcp: the
    image has no HTTP client), sent with a forged X-Forwarded-For."""
    script = (
        'exec 3<>"/dev/tcp/$1/8000" || exit 1\n'
        'printf "GET %s HTTP/1.1\\r\\nHost: localhost\\r\\nX-Forwarded-For: 203.0.113.77\\r\\n'
        'Connection: close\\r\\n\\r\\n" "$2" >&3\n'
        "head -n 1 <&3\n"
    )
    result = stack.exec("postgres", "timeout", "10", "bash", "-c", script, "_", address, path, check=False)
    assert result.returncode == 0, f"postgres cannot open {address}:8000: {result.stderr}"
    return result.stdout.strip()


def test_only_traefik_reaches_the_app_port(stack: Stack) -> None:
    """A client on edge (where Traefik listens) finds no `app` by name and gets nowhere by address; PostgreSQL,
    the one other container that shares a network with the replicas, is refused by the app itself."""
    replicas = stack.container_ids("app")
    assert replicas
    targets = [f"app:{port}" for port in (8000, 9200)] + [
        f"{ip_on(stack, replica, network)}:{port}"
        for replica in replicas
        for network, port in (("app", 8000), ("app-metrics", 9200))
    ]
    probe = (
        "import json, socket, sys\n"
        "out = {}\n"
        "for target in sys.argv[1:]:\n"
        "    host, port = target.rsplit(':', 1)\n"
        "    try:\n"
        "        socket.create_connection((host, int(port)), timeout=3).close()\n"
        "        out[target] = 'connected'\n"
        "    except OSError as exc:\n"
        "        out[target] = repr(exc)\n"
        "print(json.dumps(out))\n"
    )
    edge_client = stack.client("reach-probe")
    out = stack.engine.docker("exec", edge_client, "python", "-c", probe, *targets, "traefik:443").stdout
    answers = json.loads(out)
    # The control: the probe does connect where an edge client may go.
    assert answers.pop("traefik:443") == "connected"
    assert all(answer != "connected" for answer in answers.values()), answers
    # From backend (the backup sidecar, like migrate and the exporter): PostgreSQL, but no replica.
    replica_ports = [f"{ip_on(stack, replica, net)}:8000" for replica in replicas for net in ("app", "db-app")]
    backend_targets = ["app:8000", *replica_ports]
    out = stack.exec("backup", "python3", "-c", probe, *backend_targets, "postgres:5432").stdout
    answers = json.loads(out)
    assert answers.pop("postgres:5432") == "connected"
    assert all(answer != "connected" for answer in answers.values()), answers
    # PostgreSQL shares db-app with the replicas, so it does open :8000 (no network layout can prevent it),
    # but the app serves only the proxy network: 403, and nothing is counted, forged header or not.
    before = stats(stack)["total_visits"]
    for replica in replicas:
        for path in ("/", "/healthz"):
            status = http_from_postgres(stack, ip_on(stack, replica, "db-app"), path)
            assert status.startswith("HTTP/1.1 403"), (replica, path, status)
    assert stats(stack)["total_visits"] == before
    # And from Alertmanager and Grafana: neither the page nor the app's metrics.
    for service in ("alertmanager", "grafana"):
        assert wget(stack, service, "http://prometheus:9090/-/healthy"), f"{service}: control failed"
        for target in ("app:8000", "app:9200", f"{ip_on(stack, replicas[0], 'app')}:8000"):
            assert not wget(stack, service, f"http://{target}/healthz"), f"{service} reaches {target}"


def test_only_prometheus_reaches_the_metrics_ports(stack: Stack) -> None:
    node_exporter = stack.container_ids("node-exporter")[0]
    by_address = f"{ip_on(stack, node_exporter, 'scrape-node')}:9100"
    # The python image has no wget: the alert logger gets a client of its own.
    script = (
        "import sys, urllib.request\n"
        "for url in sys.argv[1:]:\n"
        "    try:\n"
        "        urllib.request.urlopen(url, timeout=3)\n"
        "        print('reached', url)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    urls = [f"http://{target}/metrics" for target in (*METRICS, by_address)]
    reached = stack.exec("alert-logger", "python", "-c", script, "http://alertmanager:9093/-/healthy", *urls).stdout
    assert reached.split() == ["reached", "http://alertmanager:9093/-/healthy"], reached
    # The controls: Grafana queries Prometheus, Alertmanager reaches it, the others their own metrics port.
    for service, control in (
        ("alertmanager", "http://prometheus:9090/-/healthy"),
        ("grafana", "http://prometheus:9090/-/healthy"),
        ("traefik", "http://127.0.0.1:8082/metrics"),
        ("node-exporter", "http://127.0.0.1:9100/metrics"),
        ("postgres-exporter", "http://127.0.0.1:9187/metrics"),
        # Its own port wants Prometheus's password too: the control is that its wget does get an answer.
        ("blackbox", None),
    ):
        if control:
            assert wget(stack, service, control), f"{service}: control failed"
        else:
            assert status_from(stack, service, "http://127.0.0.1:9115/metrics") == 401, f"{service}: control failed"
        own = {target for target in METRICS if target.startswith(f"{service}:")}
        if service == "node-exporter":
            own.add(by_address)
        for target in (*METRICS, by_address):
            if target not in own:
                assert not wget(stack, service, f"http://{target}/metrics"), f"{service} reaches {target}"
    # ... while Prometheus scrapes every one of them.
    jobs = {"node", "postgres", "blackbox-https", "traefik", "tally-app"}

    def up() -> set[str]:
        out = stack.exec("prometheus", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/api/v1/targets").stdout
        targets = json.loads(out)["data"]["activeTargets"]
        return {t["labels"]["job"] for t in targets if t["health"] == "up"}

    wait_until(lambda: jobs <= up(), timeout=120, interval=2, message=f"Prometheus scrapes {sorted(jobs)}")


def status_from(stack: Stack, service: str, url: str) -> int | None:
    """The HTTP status `service`'s own container gets from `url` (wget -S prints the response's status line),
    None when nothing answered."""
    result = stack.exec(service, "wget", "-S", "-t", "1", "-T", "3", "-O", "/dev/null", url, check=False, timeout=60)
    statuses = STATUS_LINE.findall(result.stderr)
    return int(statuses[-1]) if statuses else None


def status_from_replica(stack: Stack, replica: str, url: str) -> int | None:
    script = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n"
        "    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
        "except OSError:\n"
        "    print('none')\n"
    )
    out = stack.engine.docker("exec", replica, "python", "-c", script, url).stdout.strip()
    return None if out == "none" else int(out)


def refused_on(stack: Stack, replica: str, listener: str) -> float:
    script = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9200/metrics', timeout=5).read().decode())"
    text = stack.engine.docker("exec", replica, "python", "-c", script).stdout
    pattern = rf'^tally_requests_refused_total\{{[^}}]*listener="{listener}"[^}}]*\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.MULTILINE))


def test_metrics_listeners_refuse_their_network_neighbours(stack: Stack) -> None:
    """The metrics ports of the two services that must share networks with others answer only Prometheus (and
    their own loopback), and the app counts and logs whom it refused."""
    replicas = stack.container_ids("app")
    assert replicas
    # Traefik's :8082: Grafana (network `grafana`), blackbox (`edge`) and the replicas (`app`) open it and
    # get 403 on both routes, while Traefik's own loopback (its health check) is served.
    for service in ("grafana", "blackbox"):
        for path in ("/metrics", "/ping"):
            assert status_from(stack, service, f"http://traefik:8082{path}") == 403, (service, path)
    assert status_from(stack, "traefik", "http://127.0.0.1:8082/metrics") == 200
    # (A 403 is Traefik's answer: each of them does open the port.)
    for replica in replicas:
        assert status_from_replica(stack, replica, "http://traefik:8082/metrics") == 403, replica
    # The replicas' :9200: Traefik (network `app`) gets 403 from each; the replica itself is served.
    traefik = stack.container_ids("traefik")[0]
    traefik_address = ip_on(stack, traefik, "app")
    before = {replica: refused_on(stack, replica, "metrics") for replica in replicas}
    for replica in replicas:
        target = f"http://{ip_on(stack, replica, 'app')}:9200/metrics"
        assert status_from(stack, "traefik", target) == 403, replica
        assert status_from_replica(stack, replica, "http://127.0.0.1:9200/metrics") == 200
    # ... counted by each replica and logged with Traefik's address (the operator's view of an intruder).
    for replica in replicas:
        assert refused_on(stack, replica, "metrics") == before[replica] + 1, replica
    logs = [json.loads(line) for line in stack.logs("app").splitlines() if "refused a peer" in line]
    assert any(entry.get("listener") == "metrics" and entry.get("peer") == traefik_address for entry in logs), logs[-5:]
    # Prometheus, the one reader: both jobs up (test_only_prometheus_reaches_the_metrics_ports waits for that).


def test_grafana_queries_prometheus_but_cannot_reach_alertmanager(stack: Stack) -> None:
    """Alertmanager's API has no authentication: whoever reaches it can silence every alert. Grafana, the one
    monitoring service with a router, meets Prometheus on `dashboards` and shares no network with Alertmanager."""
    alertmanager = stack.container_ids("alertmanager")[0]
    by_address = f"http://{ip_on(stack, alertmanager, 'monitoring')}:9093/-/healthy"
    assert wget(stack, "grafana", "http://prometheus:9090/-/healthy"), "grafana: control failed"
    assert wget(stack, "prometheus", by_address), "prometheus: control failed"
    for url in ("http://alertmanager:9093/-/healthy", by_address):
        assert not wget(stack, "grafana", url), f"grafana reaches {url}"


def test_blackbox_serves_only_prometheus(stack: Stack) -> None:
    """blackbox's /probe fetches whatever URL it is given from blackbox's networks. Traefik shares `edge` with
    it (the probe takes the visitor's path) and opens :9115, but without Prometheus's password (the secret
    blackbox_password, which only Prometheus mounts) every path answers 401, /probe included; Prometheus's
    own probe of the public entry point succeeds end to end."""
    fetch_prometheus = "/probe?module=https_2xx_selfsigned&target=http://prometheus:9090/api/v1/targets"
    for service in ("traefik", "prometheus"):
        for path in (fetch_prometheus, "/metrics", "/-/healthy"):
            assert status_from(stack, service, f"http://blackbox:9115{path}") == 401, (service, path)
    assert status_from(stack, "traefik", f"http://prometheus:wrong-password@blackbox:9115{fetch_prometheus}") == 401
    assert "blackbox_password" not in {
        Path(m["Destination"]).name for m in stack.inspect(stack.container_ids("traefik")[0])["Mounts"]
    }

    def probe_success() -> list[str]:
        query = "query?query=probe_success%7Bjob%3D%22blackbox-https%22%7D"
        return [sample["value"][1] for sample in prometheus_api(stack, query)["result"]]

    wait_until(lambda: probe_success() == ["1"], timeout=120, interval=2, message="blackbox-https probe_success 1")


# --- Grafana's router (the stand-in image: docs/container-testing.md) -------------------------------------------


def grafana_status(stack: Stack, client_name: str, path: str = "/grafana/api/health") -> int:
    statuses: list[int] = stack.visit(client_name, "--path", path)["statuses"]
    return statuses[0]


@contextmanager
def grafana_allowed(stack: Stack, cidrs: str) -> Iterator[None]:
    """GRAFANA_ALLOWED_IPS set in the suite's env file and Grafana recreated with it; put back afterwards."""
    original = stack.env_file.read_text()
    try:
        stack.env_file.write_text(original + f"GRAFANA_ALLOWED_IPS={cidrs}\n")
        stack.compose("up", "-d", "--no-deps", "--wait", "grafana", timeout=300)
        yield
    finally:
        stack.env_file.write_text(original)
        stack.compose("up", "-d", "--no-deps", "--wait", "grafana", timeout=300)


def test_grafana_is_not_public_by_default_and_served_to_the_allow_list(stack: Stack) -> None:
    # The SSH tunnel's end: the loopback port answers (Grafana runs and is healthy).
    port = re.search(r"^GRAFANA_LOCAL_PORT=(\d+)$", stack.env_file.read_text(), re.MULTILINE)
    assert port
    with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/grafana/api/health", timeout=10) as answer:
        assert json.loads(answer.read())["database"] == "ok"
    # Through Traefik: 403 to every client by default, from the host and from the edge network.
    assert client.get("127.0.0.1", stack.https_port, "/grafana/")[0] == 403
    assert grafana_status(stack, "grafana-friend") == 403
    assert grafana_status(stack, "grafana-stranger") == 403
    friend = ip_on(stack, stack.client("grafana-friend"), "edge")
    with grafana_allowed(stack, f"{friend}/32"):
        wait_until(
            lambda: grafana_status(stack, "grafana-friend") == 200,
            timeout=60,
            interval=1,
            message="Traefik routes the allow-listed client to Grafana",
        )
        assert grafana_status(stack, "grafana-friend", "/grafana/") == 200
        assert grafana_status(stack, "grafana-stranger") == 403
    wait_until(
        lambda: grafana_status(stack, "grafana-friend") == 403,
        timeout=60,
        interval=1,
        message="the allow-list back to its default",
    )


# --- the page's Content-Security-Policy in Chromium ----------------------------------------------------------

CHROMIUM = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--ignore-certificate-errors",
    # Console messages (CSP violations among them) go to stderr.
    "--enable-logging=stderr",
    "--v=0",
)


def chromium(url: str, profile: Path) -> tuple[str, str]:
    """Chromium's rendered DOM of `url` and its log."""
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed (apt install chromium)"
    result = subprocess.run(
        [binary, *CHROMIUM, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return result.stdout, result.stderr


def csp_violations(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Content Security Policy" in line]


@contextmanager
def page_server(body: bytes, headers: dict[str, str]) -> Iterator[str]:
    """A local server answering every GET with `body` and `headers`: the same policy on a page with a script."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            for name, value in {**headers, "Content-Type": "text/html; charset=utf-8"}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_the_page_renders_in_chromium_under_its_content_security_policy(stack: Stack, tmp_path: Path) -> None:
    before = stats(stack)["total_visits"]
    dom, log = chromium(f"https://localhost:{stack.https_port}/", tmp_path / "profile")
    # Rendered: the page with the count, the visit recorded, nothing of it refused by the policy.
    assert visit_figure(dom) >= 1
    assert "You have visited this page" in dom
    assert stats(stack)["total_visits"] == before + 1
    assert csp_violations(log) == [], csp_violations(log)
    # The policy Traefik sends would stop a script injected into this very page: the control that shows the
    # check above can fail.
    _, headers, page = client.get("127.0.0.1", stack.https_port, "/")
    policy = {k.lower(): v for k, v in headers.items()}["content-security-policy"]
    injected = page.replace("</body>", "<script>document.body.setAttribute('data-ran', 'yes')</script></body>")
    assert injected != page
    with page_server(injected.encode(), {"Content-Security-Policy": policy}) as url:
        dom, log = chromium(url, tmp_path / "profile")
    assert 'data-ran="yes"' not in dom
    assert any("inline script" in line for line in csp_violations(log)), log[-3000:]
    with page_server(injected.encode(), {}) as url:
        dom, _ = chromium(url, tmp_path / "profile")
    assert 'data-ran="yes"' in dom
