"""app/shutdown.py under the real gunicorn: after SIGTERM the replica serves on for SHUTDOWN_DELAY with
/readyz answering 503 "draining", then stops by itself, or at once on a second SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import requests

from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.procs import wait_until


def start(tmp_path: Path, delay: int) -> tuple[Gunicorn, Path]:
    url = f"sqlite:///{tmp_path / 'tally.sqlite3'}"
    assert migrate(url, tmp_path).returncode == 0
    marker = tmp_path / "draining"
    env = base_env(url, tmp_path, SHUTDOWN_DELAY=str(delay), DRAIN_MARKER=str(marker), WEB_CONCURRENCY="1")
    return run_gunicorn(env, tmp_path / "gunicorn.log"), marker


def test_serves_on_after_sigterm_until_a_second_one(tmp_path: Path) -> None:
    # Longer than any test could take: only the second SIGTERM can end it.
    server, marker = start(tmp_path, delay=60)
    try:
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: "SIGTERM: serving 60 s more" in server.log(), timeout=15, message="the delay begins")
        assert marker.exists()
        ready = requests.get(server.url + "/readyz", timeout=5)
        assert (ready.status_code, ready.json()["status"]) == (503, "draining")
        # A request Traefik sent before it took the replica out is served and counted, not refused.
        visit = requests.get(server.url + "/", timeout=5)
        assert visit.status_code == 200 and 'id="total-visitors">1<' in visit.text
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()
    finally:
        server.stop(sig=signal.SIGKILL, timeout=10)


@pytest.mark.parametrize("delay", [1, 0])
def test_one_sigterm_stops_it_when_the_delay_ends(tmp_path: Path, delay: int) -> None:
    server, marker = start(tmp_path, delay)
    try:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.log()
        delayed = "SIGTERM: serving 1 s more" in server.log()
        assert (delayed, marker.exists()) == (delay > 0, delay > 0)
    finally:
        server.stop(sig=signal.SIGKILL, timeout=10)
