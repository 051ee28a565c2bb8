"""The Locust suite, run headless as operators run it: ``python -m loadtest`` in a subprocess.

Against the real app (gunicorn + PostgreSQL) the smoke shape must pass with zero failures and leave
its reports; against small stand-in servers, failures, slowness and a saturating ramp must give the
documented verdicts and exit codes.

No verdict here depends on how fast this machine is: runs that must pass do so with the p95 limit out
of reach (``NO_P95_LIMIT``), the runs that must break it use a stand-in that sleeps far beyond the
limit, and the ramp saturates on a count (open connections), not on time. Latency figures belong to
``make loadtest`` / ``make bench``.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import REPO_ROOT
from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.postgres import PostgresServer
from harness.procs import free_port, wait_until
from loadtest.background import Load

pytestmark = pytest.mark.slow  # every test runs Locust in a subprocess

SUMMARY = re.compile(
    r"^tally-loadtest shape=(?P<shape>\w+) requests=(?P<requests>\d+) failures=(?P<failures>\d+) \([\d.]+%\)"
    r" rps=[\d.]+ p50=\d+ms p95=(?P<p95>\d+)ms p99=\d+ms(?P<knee> knee=\S+)? verdict=(?P<verdict>PASS|FAIL)",
    re.MULTILINE,
)
PAGE = b"<p>You have visited this page 1 time.</p>"
# A p95 limit no run can reach: `run_loadtest` kills any run after 120 s.
NO_P95_LIMIT = ("--p95-ms", str(3_600_000))


def run_loadtest(
    host: str, results: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    # `timeout` bounds the run even if a shape never ends; Locust's own limits are what is under test.
    # --stop-timeout: a request still in flight when the shape ends is waited for and counted, not
    # dropped, so what a run counts does not depend on how fast the machine is.
    command = [sys.executable, "-m", "loadtest", "--host", host, "--results-dir", str(results), "--stop-timeout", "30"]
    return subprocess.run(
        ["timeout", "120", *command, *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> re.Match[str]:
    match = SUMMARY.search(result.stdout)
    assert match, f"no summary line\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    return match


@pytest.fixture(scope="module")
def loadtest_database(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = pg_server.create_database("loadtest_smoke")
    migrated = migrate(url, tmp_path_factory.mktemp("loadtest-migrate"))
    assert migrated.returncode == 0, migrated.stderr
    return url


@pytest.fixture(scope="module")
def app_server(loadtest_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    tmp = tmp_path_factory.mktemp("loadtest-app")
    # One trusted hop: the generator plays the proxy, so X-Forwarded-For makes distinct visitors.
    server = run_gunicorn(base_env(loadtest_database, tmp, TRUSTED_PROXY_HOPS="1"), tmp / "gunicorn.log")
    try:
        yield server
    finally:
        server.stop()


class Stub:
    """A stand-in target whose behaviour the test controls: status, per-request delay, capacity."""

    def __init__(
        self, status: int = 200, delay_s: float = 0.0, max_connections: int = 0, tls_cert: Path | None = None
    ) -> None:
        self.status, self.delay_s = status, delay_s
        # Capacity model: every request gets 503 while more than `max_connections` (if set) are open.
        # Each Locust user keeps one connection, so the step with one user too many fails whole.
        self.max_connections = max_connections
        self.connections = 0
        self.in_flight = 0
        self.pages_asked = 0  # GET / requests that reached the stand-in
        self.lock = threading.Lock()
        self.annotations: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes; Nagle + delayed ACK would add ~40 ms to each.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with stub.lock:
                    stub.connections += 1

            def finish(self) -> None:
                with stub.lock:
                    stub.connections -= 1
                super().finish()

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                with stub.lock:
                    saturated = 0 < stub.max_connections < stub.connections
                    stub.pages_asked += self.path == "/"
                    stub.in_flight += 1
                if stub.delay_s:
                    time.sleep(stub.delay_s)  # the stand-in's service time, not synchronisation
                try:
                    self._send(503 if saturated else stub.status, PAGE)
                finally:
                    with stub.lock:
                        stub.in_flight -= 1

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                stub.annotations.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("Authorization"),
                        "body": json.loads(self.rfile.read(length)),
                    }
                )
                self._send(200, b'{"id": 1}')

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda *_: None  # type: ignore[method-assign]  # rejected handshakes, by design
        self.scheme = "http"
        if tls_cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls_cert)
            # Handshake in each connection's thread on first read, not in the accept loop, where one slow
            # or rejecting client would hold up every other one.
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://localhost:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_factory() -> Iterator[Any]:
    stubs: list[Stub] = []

    def make(**kwargs: Any) -> Stub:
        stubs.append(Stub(**kwargs))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()


def env_with(**overrides: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOADTEST_", "GRAFANA_"))}
    return env | overrides


def test_smoke_against_the_app_passes_and_writes_reports(
    app_server: Gunicorn, tmp_path: Path, stub_factory: Any
) -> None:
    grafana = stub_factory()
    results = tmp_path / "smoke"
    result = run_loadtest(
        app_server.url,
        results,
        "--shape-duration",
        "4",
        "--exit-code-on-error",
        "1",
        *NO_P95_LIMIT,
        env=env_with(LOADTEST_USER_RPS="5", GRAFANA_URL=grafana.url, GRAFANA_TOKEN="test-token"),
    )
    summary = summary_of(result)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert summary["verdict"] == "PASS"
    assert summary["failures"] == "0"
    for name in ("locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv", "report.html"):
        assert (results / name).stat().st_size > 0, name
    assert "/ (new)" in (results / "locust_stats.csv").read_text()
    data = json.loads((results / "summary.json").read_text())
    assert set(data["per_request"]) == {"GET / (returning)", "GET / (new)", "GET /api/stats", "GET /version"}
    assert all(entry["requests"] > 0 for entry in data["per_request"].values()), data["per_request"]
    # Distinct forwarded addresses must have become distinct visitors, or NewVisitor measured nothing.
    assert data["forwarded_for_trusted"] is True
    assert len(grafana.annotations) == 1
    annotation = grafana.annotations[0]
    assert annotation["path"] == "/api/annotations"
    assert annotation["auth"] == "Bearer test-token"
    assert "loadtest" in annotation["body"]["tags"]
    assert annotation["body"]["timeEnd"] >= annotation["body"]["time"]


def test_untrusted_forwarded_for_is_reported(loadtest_database: str, tmp_path: Path) -> None:
    # The production setting for a bare gunicorn: no proxy trusted, so forged addresses are ignored.
    server = run_gunicorn(base_env(loadtest_database, tmp_path, TRUSTED_PROXY_HOPS="0"), tmp_path / "gunicorn.log")
    try:
        result = run_loadtest(
            server.url,
            tmp_path / "r",
            "--shape-duration",
            "2",
            *NO_P95_LIMIT,
            "NewVisitor",
            env=env_with(LOADTEST_USER_RPS="5"),
        )
    finally:
        server.stop()
    assert summary_of(result)["verdict"] == "PASS"
    assert "ignores X-Forwarded-For" in result.stdout
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["forwarded_for_trusted"] is False


def test_failing_target_exits_non_zero(tmp_path: Path, stub_factory: Any) -> None:
    target = stub_factory(status=503)
    result = run_loadtest(
        target.url,
        tmp_path / "r",
        "--shape-duration",
        "2",
        *NO_P95_LIMIT,
        "ReturningVisitor",
        env=env_with(LOADTEST_USER_RPS="5"),
    )
    summary = summary_of(result)
    assert result.returncode != 0
    assert summary["verdict"] == "FAIL"
    assert int(summary["failures"]) > 0
    reasons = result.stdout.split("verdict=FAIL", 1)[1].splitlines()[0]
    assert "failure ratio" in reasons and "p95" not in reasons


def test_slow_target_breaks_the_p95_threshold(tmp_path: Path, stub_factory: Any) -> None:
    # Every answer takes at least 60 ms (the stand-in sleeps that long), three times the limit: a busy
    # machine can only make it slower, so the verdict cannot flip.
    target = stub_factory(delay_s=0.06)
    result = run_loadtest(
        target.url,
        tmp_path / "r",
        "--shape-duration",
        "2",
        "--p95-ms",
        "20",
        "ReturningVisitor",
        env=env_with(LOADTEST_USER_RPS="5"),
    )
    summary = summary_of(result)
    assert result.returncode != 0
    assert summary["verdict"] == "FAIL"
    assert summary["failures"] == "0"
    assert int(summary["p95"]) >= 60


def test_step_shape_stops_at_the_knee(tmp_path: Path, stub_factory: Any) -> None:
    # The stub serves 2 open connections and answers 503 to everything beyond: with one user (one
    # connection) added per step, steps 1 and 2 are good, step 3 breaks the failure ratio, so the knee
    # is 2 users, however fast or slow the machine is.
    target = stub_factory(max_connections=2)
    result = run_loadtest(
        target.url,
        tmp_path / "r",
        "--shape",
        "step",
        "--shape-users",
        "1",
        "--step-seconds",
        "3",
        "--max-steps",
        "6",
        *NO_P95_LIMIT,
        "ReturningVisitor",
        env=env_with(LOADTEST_USER_RPS="max"),
    )
    summary = summary_of(result)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert summary["knee"].startswith(" knee=users:2,"), result.stdout
    knee = json.loads((tmp_path / "r" / "summary.json").read_text())["knee"]
    assert [step["good"] for step in knee["steps"]] == [True, True, False]


def test_step_shape_without_a_good_step_fails(tmp_path: Path, stub_factory: Any) -> None:
    target = stub_factory(delay_s=0.06)
    result = run_loadtest(
        target.url,
        tmp_path / "r",
        "--shape",
        "step",
        "--shape-users",
        "1",
        "--step-seconds",
        "2",
        "--p95-ms",
        "20",
        "ReturningVisitor",
        env=env_with(LOADTEST_USER_RPS="max"),
    )
    assert result.returncode != 0
    assert summary_of(result)["knee"] == " knee=none"


def test_target_that_does_not_answer_is_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    port = free_port()  # nothing listens on it
    result = run_loadtest(f"http://127.0.0.1:{port}", tmp_path / "r", "--shape", "smoke")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"http://127.0.0.1:{port} does not answer" in result.stderr
    assert "start the target first" in result.stderr
    assert not (tmp_path / "r").exists()


def test_invalid_shape_options_are_refused(tmp_path: Path, stub_factory: Any) -> None:
    target = stub_factory()
    result = run_loadtest(target.url, tmp_path / "r", "--shape", "soak", "--shape-duration", "999999")
    assert result.returncode != 0
    assert "--shape-duration" in result.stderr


@pytest.fixture
def self_signed_cert(tmp_path: Path) -> Path:
    """Like the stack's default certificate: self-signed for localhost, unknown to any CA bundle."""
    pem = tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(pem),
            "-out",
            str(pem),
        ],
        check=True,
        capture_output=True,
    )
    return pem


def test_self_signed_https_needs_the_explicit_opt_out(
    tmp_path: Path, stub_factory: Any, self_signed_cert: Path
) -> None:
    target = stub_factory(tls_cert=self_signed_cert)
    # TLS behaviour only: latency is out of the verdict, which then hangs on failures alone. One user:
    # one TLS context, not ten competing for a busy CPU.
    args = ("--shape-duration", "3", "--shape-users", "1", *NO_P95_LIMIT, "ReturningVisitor")
    verified = run_loadtest(target.url, tmp_path / "verified", *args, env=env_with(LOADTEST_USER_RPS="5"))
    assert verified.returncode != 0
    assert summary_of(verified)["verdict"] == "FAIL"
    assert "CERTIFICATE_VERIFY_FAILED" in verified.stdout + verified.stderr
    insecure = run_loadtest(
        target.url, tmp_path / "insecure", *args, env=env_with(LOADTEST_USER_RPS="5", LOADTEST_INSECURE="1")
    )
    assert insecure.returncode == 0, insecure.stdout + insecure.stderr[-3000:]
    assert summary_of(insecure)["failures"] == "0"
    assert int(summary_of(insecure)["requests"]) > 0


def test_background_load_stopped_with_ctrl_c_keeps_every_request_the_target_saw_in_its_ledger(
    stub_factory: Any, tmp_path: Path
) -> None:
    # The drills' rule: a request the app saw (and may have counted) must be in the ledger, so stopping the
    # background load (SIGINT) lets the requests in flight finish. The interrupt must reach Locust's main
    # greenlet: raised in a user or in gevent's loop (Python's default), it prints its traceback to the log
    # and can end a user between its request and its ledger line (loadtest/locustfile.py).
    target = stub_factory(delay_s=1.0)
    load = Load.start(target.url, tmp_path / "load", users=3, user_rps="max")
    try:
        wait_until(lambda: target.in_flight > 0, timeout=30, message="requests in flight")
    finally:
        result = load.stop()
    log = load.log()
    assert load.process.returncode is not None and load.process.returncode >= 0, log[-2000:]  # not SIGKILLed
    assert "KeyboardInterrupt" not in log, log[-3000:]
    assert result.visits and all(r.status == 200 and r.ok for r in result.requests)
    assert len(result.visits) == target.pages_asked
