"""Upgrading from the original app's schema keeps every count; concurrent upgrades are safe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from harness import REPO_ROOT
from harness.flask_app import make_config, migrated_app
from harness.gunicorn import base_env, migrate
from tests.app.helpers import database_totals, total_on_page

LEGACY_ROWS = [
    ("1.2.3.4", 10),
    ("::ffff:1.2.3.4", 5),  # the same person as above, counted apart by the original app
    ("2001:db8::1", 7),
    ("n/a", 3),  # merged header lists became this bogus visitor
    ("fe80::1%eth0", 1),
]


def create_legacy_schema(database_url: str) -> None:
    engine = create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE visitor (id INTEGER PRIMARY KEY, ip VARCHAR(40) UNIQUE, visits INTEGER)"))
        connection.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
        connection.execute(text("INSERT INTO alembic_version VALUES ('e0f6b6d1a2c3')"))
        for number, (ip, visits) in enumerate(LEGACY_ROWS, start=1):
            row = {"id": number, "ip": ip, "visits": visits}
            connection.execute(text("INSERT INTO visitor VALUES (:id, :ip, :visits)"), row)
    engine.dispose()


def test_legacy_rows_become_keyed_hashes_with_every_count(database_url: str) -> None:
    create_legacy_schema(database_url)
    app = migrated_app(make_config(database_url))
    totals = database_totals(app)
    assert totals["visits"] == sum(visits for _, visits in LEGACY_ROWS)
    assert totals["visitors"] == 4
    assert totals == totals | {"shard_visits": totals["visits"], "shard_visitors": 4}
    engine = app.extensions["tally"].engine
    with engine.connect() as connection:
        assert connection.execute(text("SELECT 1 FROM visitors WHERE visits = 15")).first() is not None
        tables = set(connection.dialect.get_table_names(connection))
        stored = b"".join(row[0] for row in connection.execute(text("SELECT visitor_key FROM visitors")))
    assert "visitor" not in tables
    assert b"1.2.3.4" not in stored
    client = app.test_client()
    page = client.get("/", environ_base={"REMOTE_ADDR": "1.2.3.4"}).get_data(as_text=True)
    assert 'visit-figure">16<' in page
    assert total_on_page(page) == 4


@pytest.mark.slow
def test_concurrent_upgrades_from_several_replicas(pg_database: str, tmp_path: Path) -> None:
    env = base_env(pg_database, tmp_path)
    command = [str(Path(sys.executable).parent / "flask"), "--app", "app", "db", "upgrade"]
    processes = [
        subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=120)[0].decode() for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert sum("Running upgrade  -> 0001_baseline" in output for output in outputs) == 1
    engine = create_engine(pg_database)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001_baseline"
        assert connection.execute(text("SELECT count(*) FROM total_shards")).scalar() == 16
    engine.dispose()


@pytest.mark.slow
def test_waiting_migrator_outlasts_the_request_statement_timeout(pg_database: str, tmp_path: Path) -> None:
    """A replica queued behind another's migration waits for the lock instead of timing out like a request."""
    import threading

    import psycopg2

    from app.migrations_lock import MIGRATION_LOCK_ID

    holder = psycopg2.connect(make_url(pg_database).render_as_string(hide_password=False).replace("+psycopg2", ""))
    holder.autocommit = True
    with holder.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
    release = threading.Timer(1.5, holder.close)
    release.start()
    try:
        result = migrate(pg_database, tmp_path, DB_STATEMENT_TIMEOUT_MS="200")
    finally:
        release.join()
    assert result.returncode == 0, result.stderr
    assert "Running upgrade  -> 0001_baseline" in result.stderr + result.stdout
