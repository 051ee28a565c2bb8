"""Backup → wipe → restore, and restore's safety rules."""

from __future__ import annotations

import psycopg2
import pytest

from .conftest import Sidecar, manifest, name_of, summary

pytestmark = pytest.mark.slow  # real backups and restores (pg_dump, pg_restore) per test


def test_backup_wipe_restore_brings_back_every_visitor(sidecar: Sidecar) -> None:
    sidecar.seed(700)
    before = sidecar.snapshot()
    assert len(before["visitors"]) == 700

    result = sidecar.run("backup")
    assert result.returncode == 0, result.stderr
    assert summary(result, "backup").startswith("backup: OK name=tally-")
    name = name_of(result)
    recorded = manifest(sidecar.backup_dir, name)
    assert recorded["visitors"] == "700"
    assert recorded["visits"] == str(sum(int(str(row[1])) for row in before["visitors"]))
    assert recorded["alembic_revision"] == before["revision"][0][0]
    assert (sidecar.backup_dir / "latest").resolve().name == f"{name}.dump"

    sidecar.sql("DROP TABLE visitors; TRUNCATE total_shards, daily_shards; DELETE FROM alembic_version")

    result = sidecar.run("restore", "latest", "--yes", "--drop-old")
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary(result, "restore").startswith(f"restore: OK name={name} ")
    assert sidecar.snapshot() == before


def test_restore_refuses_without_confirmation(sidecar: Sidecar) -> None:
    sidecar.seed(10)
    assert sidecar.run("backup").returncode == 0
    sidecar.seed(5, offset=10)

    result = sidecar.run("restore", "latest")
    assert result.returncode == 2
    assert "without --yes" in summary(result, "restore")
    assert sidecar.sql("SELECT count(*) FROM visitors") == [(15,)]


def test_restore_terminates_open_connections_of_the_database_only(sidecar: Sidecar) -> None:
    sidecar.seed(300)
    before = sidecar.snapshot()
    assert sidecar.run("backup").returncode == 0
    sidecar.seed(50, offset=300)  # written after the backup: must be gone after the restore

    app_idle = sidecar.connect()
    app_in_transaction = sidecar.connect()
    app_in_transaction.autocommit = False
    with app_in_transaction.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM visitors")  # holds a lock on visitors
    bystander = sidecar.connect("postgres")
    try:
        result = sidecar.run("restore", "latest", "--yes")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "terminated 2 connection(s)" in result.stderr

        for connection in (app_idle, app_in_transaction):
            with pytest.raises(psycopg2.OperationalError), connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        with bystander.cursor() as cursor:  # a connection to another database is left alone
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        for connection in (app_idle, app_in_transaction, bystander):
            connection.close()

    assert sidecar.snapshot() == before
    kept = sidecar.databases("_pre_restore_")
    assert len(kept) == 1 and kept[0][1] is False, kept
    assert str(kept[0][0]) in summary(result, "restore")


def test_restore_checks_the_schema_revision_and_never_touches_live_data_on_mismatch(sidecar: Sidecar) -> None:
    sidecar.seed(20)
    assert sidecar.run("backup").returncode == 0
    sidecar.seed(1, offset=20)

    result = sidecar.run("restore", "latest", "--yes", "--expect-revision", "9999_future")
    assert result.returncode == 1
    line = summary(result, "restore")
    assert line.startswith("restore: FAILED") and "alembic_revision" in line and "9999_future" in line
    assert "live database unchanged" in line
    assert sidecar.sql("SELECT count(*) FROM visitors") == [(21,)]
    assert sidecar.databases("_") == []


def test_restore_unknown_backup_fails_clearly(sidecar: Sidecar) -> None:
    result = sidecar.run("restore", "tally-20200101T000000Z", "--yes")
    assert result.returncode == 1
    assert "not found" in summary(result, "restore")


def test_backup_of_unreachable_database_fails_and_leaves_no_partial_files(sidecar: Sidecar) -> None:
    sidecar.seed(5)
    assert sidecar.run("backup", BACKUP_NOW="2026-03-01T00:00:00Z").returncode == 0
    result = sidecar.run("backup", PGDATABASE="no_such_database", BACKUP_NOW="2026-03-02T00:00:00Z")
    assert result.returncode == 1
    assert summary(result, "backup").startswith("backup: FAILED")
    assert sidecar.dumps() == ["tally-20260301T000000Z.dump"]
    assert list((sidecar.backup_dir / ".tmp").iterdir()) == []
    assert (sidecar.backup_dir / "latest").resolve().name == "tally-20260301T000000Z.dump"
    metrics = sidecar.metrics()
    assert metrics["tally_backup_last_run_success"] == 0
    assert metrics["tally_backup_last_success_timestamp_seconds"] == 1772323200  # 2026-03-01, not the failure


def test_backup_reads_the_password_file(sidecar: Sidecar, tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = sidecar.run("backup", PGPASSWORD_FILE=str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "PGPASSWORD_FILE" in summary(result, "backup")
