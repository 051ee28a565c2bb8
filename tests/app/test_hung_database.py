"""A PostgreSQL that stops answering without closing its connections (``docker pause``; natively SIGSTOP of
every server process): dead-peer detection reaches libpq, and a worker stuck in it is replaced by itself.
The bounded answer through Traefik is tests/stack/test_edge_runtime.py."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest
import requests

from app.db import DEAD_PEER_DETECTION
from app.watchdog import WEDGED_EXIT_STATUS, RequestWatchdog
from harness.flask_app import make_config, migrated_app
from harness.gunicorn import base_env, migrate, run_gunicorn
from harness.postgres import PostgresServer
from harness.procs import child_pids, wait_until

GUNICORN_TIMEOUT_S = 2


def test_dead_peer_detection_reaches_libpq(pg_database: str) -> None:
    app = migrated_app(make_config(pg_database))
    with app.app_context():
        from app.models import db

        connection = db.engine.raw_connection()
        try:
            effective = connection.dbapi_connection.get_dsn_parameters()  # type: ignore[union-attr]
        finally:
            connection.close()
    for name, value in DEAD_PEER_DETECTION.items():
        assert effective[name] == str(value), name


def test_watchdog_ends_the_worker_only_past_the_limit() -> None:
    now = [100.0]
    exits: list[int] = []
    watchdog = RequestWatchdog(30, clock=lambda: now[0], exit_process=exits.append)
    first, second = object(), object()
    watchdog.begin(first)
    now[0] += 20
    watchdog.begin(second)
    assert watchdog.check() and exits == []
    watchdog.end(first)
    now[0] += 20  # second is 20 s old: fine, first finished
    assert watchdog.check() and exits == []
    now[0] += 11
    assert not watchdog.check()
    assert exits == [WEDGED_EXIT_STATUS]


@pytest.mark.slow
def test_worker_wedged_on_a_frozen_database_is_replaced(own_postgres: PostgresServer, tmp_path: Path) -> None:
    url = own_postgres.create_database("tally")
    assert migrate(url, tmp_path).returncode == 0
    env = base_env(url, tmp_path, WEB_CONCURRENCY="1", GUNICORN_TIMEOUT=str(GUNICORN_TIMEOUT_S))
    server = run_gunicorn(env, tmp_path / "gunicorn.log")
    outcomes: list[object] = []
    try:
        assert requests.get(server.url + "/", timeout=10).status_code == 200
        [worker] = child_pids(server.process.pid)
        frozen = own_postgres.pids()
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            stuck = threading.Thread(target=lambda: outcomes.append(_get(server.url + "/")), daemon=True)
            stuck.start()
            wait_until(
                lambda: child_pids(server.process.pid) - {worker},
                timeout=3 * GUNICORN_TIMEOUT_S + 10,
                message="a fresh worker in place of the wedged one",
            )
            stuck.join(timeout=10)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert worker not in child_pids(server.process.pid)
        assert "worker wedged" in server.log()
        # The stuck request was cut off with its worker (a connection error, not an answer).
        assert outcomes and not isinstance(outcomes[0], int), outcomes
        wait_until(lambda: _get(server.url + "/") == 200, timeout=15, message="visits served after the thaw")
        # The first visit, the one sent into the frozen database (it ran once, when the server thawed), and
        # the visit(s) after: counted once each.
        [(visits,)] = own_postgres.execute("SELECT sum(visits) FROM visitors", "tally")
        assert 2 <= int(str(visits)) <= 3
    finally:
        server.stop()


def _get(url: str) -> int | str:
    try:
        return requests.get(url, timeout=30).status_code
    except requests.RequestException as exc:
        return type(exc).__name__
