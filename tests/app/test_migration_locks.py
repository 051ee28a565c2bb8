"""A migration that needs a table someone else holds (the nightly dump) waits briefly, backs off and
retries, so the visits behind it are never queued for long; it gives up cleanly after its attempts."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import make_url

from harness import REPO_ROOT
from harness.gunicorn import base_env, migrate
from harness.procs import wait_until
from tests.app.test_db_roles import PASSWORDS
from tests.app.test_migrations import LEGACY_ROWS, create_legacy_schema

RETRY_MESSAGE = "lock not available within"


def dsn(url: str) -> str:
    return make_url(url).render_as_string(hide_password=False).replace("+psycopg2", "")


@pytest.fixture
def dump_holding_the_legacy_table(pg_database: str) -> Iterator[psycopg2.extensions.connection]:
    """What pg_dump does: an open transaction holding ACCESS SHARE on every table it dumps."""
    create_legacy_schema(pg_database)
    holder = psycopg2.connect(dsn(pg_database))
    with holder.cursor() as cursor:
        cursor.execute("LOCK TABLE visitor IN ACCESS SHARE MODE")
    yield holder
    holder.close()


def test_migration_backs_off_lets_writers_through_and_finishes_once_the_lock_is_free(
    pg_database: str, dump_holding_the_legacy_table: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    env = base_env(pg_database, tmp_path, MIGRATION_LOCK_TIMEOUT_MS="100", MIGRATION_LOCK_ATTEMPTS="1000")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "db", "upgrade"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output: list[str] = []
    # Never hang the suite when no retry ever comes (a regression): the read below then ends at EOF.
    guard = threading.Timer(90, process.kill)
    guard.start()
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if RETRY_MESSAGE in line:
                break
        assert any(RETRY_MESSAGE in line for line in output), "".join(output)
        # The migration is between attempts or waiting at most 100 ms: a writer of the contended table gets
        # through (with lock_timeout = 0 in the migration, it would queue behind the DROP for good).
        writer = psycopg2.connect(dsn(pg_database))
        try:
            with writer.cursor() as cursor:
                cursor.execute("SET lock_timeout = '10s'")
                cursor.execute("UPDATE visitor SET visits = visits + 1 WHERE ip = '2001:db8::1'")
                assert cursor.rowcount == 1
            writer.commit()
        finally:
            writer.close()
        dump_holding_the_legacy_table.rollback()  # the dump ends
        wait_until(lambda: process.poll() is not None, timeout=120, message="migration finished")
        output.append(process.stdout.read())
    finally:
        guard.cancel()
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == 0, "".join(output)
    with psycopg2.connect(dsn(pg_database)) as check, check.cursor() as cursor:
        cursor.execute("SELECT sum(visits) FROM total_shards")
        assert cursor.fetchone() == (sum(visits for _, visits in LEGACY_ROWS) + 1,)
    check.close()


def test_migration_gives_up_without_changing_anything(
    pg_database: str, dump_holding_the_legacy_table: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    result = migrate(pg_database, tmp_path, MIGRATION_LOCK_TIMEOUT_MS="50", MIGRATION_LOCK_ATTEMPTS="2")
    assert result.returncode == 1
    assert "migrations: schema: no lock within 50 ms in 2 attempts" in result.stderr
    assert result.stdout.count(RETRY_MESSAGE) + result.stderr.count(RETRY_MESSAGE) == 1
    dump_holding_the_legacy_table.rollback()
    with psycopg2.connect(dsn(pg_database)) as check, check.cursor() as cursor:
        cursor.execute("SELECT to_regclass('visitors'), to_regclass('visitor') IS NOT NULL")
        assert cursor.fetchone() == (None, True)
        cursor.execute("SELECT version_num FROM alembic_version")
        assert cursor.fetchall() == [("e0f6b6d1a2c3",)]
    check.close()


def test_role_provisioning_backs_off_too(
    pg_database: str, dump_holding_the_legacy_table: psycopg2.extensions.connection, tmp_path: Path
) -> None:
    """Giving the tables to the owner role needs the same lock as a schema change (an upgrade to roles
    during the nightly dump); its driver-level lock error must take the same back-off path."""
    result = migrate(pg_database, tmp_path, MIGRATION_LOCK_TIMEOUT_MS="50", MIGRATION_LOCK_ATTEMPTS="2", **PASSWORDS)
    assert result.returncode == 1, result.stderr
    assert "migrations: roles: no lock within 50 ms in 2 attempts" in result.stderr
    dump_holding_the_legacy_table.rollback()
    with psycopg2.connect(dsn(pg_database)) as check, check.cursor() as cursor:
        cursor.execute("SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 'visitor'")
        assert cursor.fetchone() != ("tally_owner",)
    check.close()
