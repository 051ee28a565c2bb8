"""app/drain.py: creates the drain file, then waits for Traefik's metrics to report the replica down.

Traefik's metrics endpoint is played by a local HTTP server whose answer the test changes, in the text
format Traefik v3 writes (the real Traefik answers it in the e2e rolling deploy, tests/e2e).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app import drain
from harness.procs import wait_until

ME, OTHER = "172.31.240.5", "172.31.240.6"


def metrics(**up: int) -> str:
    lines = [
        "# HELP traefik_service_server_up service server is up, described by gauge value of 0 or 1.",
        "# TYPE traefik_service_server_up gauge",
    ]
    for address, value in up.items():
        lines.append(f'traefik_service_server_up{{service="tally@docker",url="http://{address}:8000"}} {value}')
    lines += ["# TYPE traefik_config_reloads_total counter", "traefik_config_reloads_total 3"]
    return "\n".join(lines) + "\n"


class FakeTraefik:
    def __init__(self) -> None:
        self.body = metrics()
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                data = owner.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"


@pytest.fixture
def traefik() -> Iterator[FakeTraefik]:
    fake = FakeTraefik()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def test_server_states_reads_only_the_given_addresses() -> None:
    text = metrics(**{ME: 0, OTHER: 1})
    assert drain.server_states(text, [ME]) == [0.0]
    assert drain.server_states(text, ["10.0.0.1", OTHER]) == [1.0]
    assert drain.server_states(text, ["172.31.240.50"]) == []


def test_waits_until_traefik_reports_the_replica_down(traefik: FakeTraefik) -> None:
    traefik.body = metrics(**{ME: 1, OTHER: 1})

    def health_check_fails() -> None:
        traefik.body = metrics(**{ME: 0, OTHER: 1})

    timer = threading.Timer(0.8, health_check_fails)
    timer.start()
    try:
        assert drain.wait_out_of_rotation(traefik.url, [ME], timeout_s=10) is None
    finally:
        timer.cancel()
    assert traefik.requests >= 2, "answered before Traefik reported the replica down"


def test_a_replica_traefik_dropped_after_listing_it_is_out(traefik: FakeTraefik) -> None:
    traefik.body = metrics(**{ME: 1, OTHER: 1})
    threading.Timer(0.5, lambda: setattr(traefik, "body", metrics(**{OTHER: 1}))).start()
    assert drain.wait_out_of_rotation(traefik.url, [ME], timeout_s=10) is None


def test_never_listed_or_still_up_is_not_confirmed(traefik: FakeTraefik) -> None:
    # Never seen at all (no health check configured, wrong address): no confirmation, whatever else is down.
    traefik.body = metrics(**{OTHER: 0})
    assert "not listed" in (drain.wait_out_of_rotation(traefik.url, [ME], timeout_s=0.6) or "")
    traefik.body = metrics(**{ME: 1})
    assert "[1.0]" in (drain.wait_out_of_rotation(traefik.url, [ME], timeout_s=0.6) or "")


def test_unreachable_traefik_is_reported() -> None:
    problem = drain.wait_out_of_rotation("http://127.0.0.1:9/metrics", [ME], timeout_s=0.3)
    assert problem is not None and "cannot read http://127.0.0.1:9/metrics" in problem


def test_main_drains_then_confirms(
    traefik: FakeTraefik, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    drain_marker = tmp_path / "draining"
    monkeypatch.setenv("TALLY_ENV", "development")
    monkeypatch.setenv("DRAIN_MARKER", str(drain_marker))
    traefik.body = metrics(**{ME: 0})
    assert drain.main(["--metrics-url", traefik.url, "--timeout", "5", ME]) == 0
    assert drain_marker.exists()
    assert "out of Traefik's rotation" in capsys.readouterr().out
    traefik.body = metrics(**{ME: 1})
    assert drain.main(["--metrics-url", traefik.url, "--timeout", "0.3", ME]) == 4


def test_main_waits_for_the_successor_before_draining(
    traefik: FakeTraefik, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Traefik rebuilds its balancer when the successor turns healthy; the drain must come after that."""
    drain_marker = tmp_path / "draining"
    monkeypatch.setenv("TALLY_ENV", "development")
    monkeypatch.setenv("DRAIN_MARKER", str(drain_marker))
    traefik.body = metrics(**{ME: 1})  # the successor OTHER is not listed yet
    marker_when_listed: list[bool] = []

    def successor_up() -> None:
        marker_when_listed.append(drain_marker.exists())
        traefik.body = metrics(**{ME: 0, OTHER: 1})

    timer = threading.Timer(0.8, successor_up)
    timer.start()
    try:
        assert drain.main(["--metrics-url", traefik.url, "--timeout", "10", "--after-up", OTHER, ME]) == 0
    finally:
        timer.cancel()
    assert marker_when_listed == [False], "drained before Traefik reported the successor up"
    assert drain_marker.exists()


def test_main_without_a_drain_marker_changes_nothing(
    traefik: FakeTraefik, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TALLY_ENV", "development")
    monkeypatch.delenv("DRAIN_MARKER", raising=False)
    assert drain.main(["--metrics-url", traefik.url, ME]) == 3
    assert "DRAIN_MARKER is not set" in capsys.readouterr().err
    assert traefik.requests == 0


def test_stdin_feed_gives_the_newest_snapshot_then_reports_the_end() -> None:
    stream = io.StringIO(f"{metrics(**{ME: 1})}# EOF\n{metrics(**{ME: 0})}# EOF\npartial-without-end\n")
    feed = drain.StdinFeed(stream, wait_s=5)
    deadline = time.monotonic() + 5
    while feed.snapshots.qsize() < 3 and time.monotonic() < deadline:  # both snapshots and the end read
        time.sleep(0.01)
    assert drain.server_states(feed(), [ME]) == [0.0]
    for _ in range(2):
        with pytest.raises(OSError, match="the feed on stdin ended"):
            feed()


def test_main_reads_traefiks_metrics_piped_in(tmp_path: Path) -> None:
    """What scripts/deploy.sh runs in the replica: snapshots of Traefik's metrics, read inside Traefik's
    container, on stdin; the replica itself never opens Traefik's metrics port."""
    drain_marker = tmp_path / "draining"
    env = {**os.environ, "TALLY_ENV": "development", "DRAIN_MARKER": str(drain_marker)}
    argv = [sys.executable, "-m", "app.drain", "--metrics-url", "-", "--timeout", "10", "--after-up", OTHER, ME]
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(f"{metrics(**{ME: 1, OTHER: 1})}# EOF\n")
        process.stdin.flush()
        # The successor is up: the replica drains itself, then waits for Traefik to report it down.
        wait_until(drain_marker.exists, timeout=10, message="the drain marker")
        process.stdin.write(f"{metrics(**{ME: 0, OTHER: 1})}# EOF\n")
        process.stdin.flush()
        assert process.wait(timeout=10) == 0
        assert "out of Traefik's rotation" in process.stdout.read()
    # The feed ends before Traefik confirms: not drained (4), said why.
    drain_marker.unlink()
    result = subprocess.run(
        [*argv[:-5], "--timeout", "30", ME],
        input=f"{metrics(**{ME: 1})}# EOF\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert result.returncode == 4 and "the feed on stdin ended" in result.stderr, result.stderr
