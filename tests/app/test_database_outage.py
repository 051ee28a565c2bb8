"""A database outage is a fast, honest 503 and heals by itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from app.config import load_config
from harness.gunicorn import base_env, migrate, run_gunicorn
from harness.postgres import PostgresServer
from harness.procs import wait_until


@pytest.mark.slow
def test_outage_answers_503_quickly_and_recovers(own_postgres: PostgresServer, tmp_path: Path) -> None:
    url = own_postgres.create_database("tally")
    assert migrate(url, tmp_path).returncode == 0
    server = run_gunicorn(base_env(url, tmp_path), tmp_path / "gunicorn.log")
    try:
        ok = [requests.get(server.url + "/", timeout=5) for _ in range(5)]
        assert {r.status_code for r in ok} == {200}

        own_postgres.stop()
        # "Quickly" is the app's own deadlines (waiting for a pooled connection, then connecting), plus
        # slack for a busy machine: an answer later than that is a hang, and requests raises on it.
        config = load_config({"TALLY_ENV": "development"})
        deadline = config.db_pool_timeout + config.db_connect_timeout + 5
        for path in ("/", "/api/stats", "/readyz"):
            response = requests.get(server.url + path, timeout=deadline)
            assert response.status_code == 503, path
            print(f"{path}: 503 after {response.elapsed.total_seconds():.3f}s (deadline {deadline}s)")
        page = requests.get(server.url + "/", timeout=5)
        assert "Temporarily unavailable" in page.text
        assert page.headers["Retry-After"] == "5"
        assert requests.get(server.url + "/healthz", timeout=5).status_code == 200

        own_postgres.start()
        recovered = wait_until(
            lambda: requests.get(server.url + "/", timeout=5).status_code == 200,
            timeout=10,
            message="first 200 after the database came back",
        )
        assert recovered
        visits = own_postgres.execute("SELECT sum(visits) FROM visitors", database="tally")[0][0]
        assert visits == 6
        assert '"message": "database unavailable"' in server.log()
    finally:
        server.stop()
