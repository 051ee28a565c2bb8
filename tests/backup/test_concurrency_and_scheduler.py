"""Runs never overlap; the scheduler's timetable, catch-up run, drill, heartbeat and shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.procs import stop_process, wait_until

from .conftest import Sidecar, summary


def blocking_pg_dump(tmp_path: Path, real: str) -> tuple[Path, Path, Path]:
    """A pg_dump wrapper that announces itself and then waits for the test to release it."""
    started, gate = tmp_path / "started", tmp_path / "gate"
    os.mkfifo(gate)
    wrapper = tmp_path / "pg_dump"
    wrapper.write_text(f'#!/bin/sh\ntouch "{started}"\nread _ < "{gate}"\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, started, gate


@pytest.mark.slow
def test_concurrent_runs_do_not_overlap(sidecar: Sidecar, tmp_path: Path) -> None:
    sidecar.seed(20)
    wrapper, started, gate = blocking_pg_dump(tmp_path, str(sidecar.server.bin_dir / "pg_dump"))
    first = sidecar.popen("backup", PG_DUMP=str(wrapper), BACKUP_NOW="2026-06-01T02:30:00Z")
    try:
        wait_until(started.exists, timeout=30, message="first backup inside pg_dump")

        second = sidecar.run("backup", BACKUP_NOW="2026-06-01T02:31:00Z")
        assert second.returncode == 75
        assert "another backup, verify or restore is running" in summary(second, "backup")
        # verify and restore wait for the lock (bounded by BACKUP_LOCK_WAIT) rather than interleave
        waited = sidecar.run("verify", "latest", BACKUP_LOCK_WAIT="0")
        assert waited.returncode in (1, 75)

        with gate.open("w") as release:
            release.write("go\n")
        out, err = first.communicate(timeout=60)
    finally:
        stop_process(first)  # type: ignore[arg-type]
    assert first.returncode == 0, out + err
    assert sidecar.dumps() == ["tally-20260601T023000Z.dump"]
    assert sidecar.metrics()["tally_backup_last_run_success"] == 1


def test_busy_lock_is_reported_without_touching_the_database(sidecar: Sidecar) -> None:
    sidecar.backup_dir.mkdir()
    lock = (sidecar.backup_dir / ".lock").open("a")
    holder = subprocess.Popen(["flock", str(sidecar.backup_dir / ".lock"), "sleep", "60"])
    try:
        wait_until(
            lambda: subprocess.run(["flock", "-n", str(sidecar.backup_dir / ".lock"), "true"]).returncode == 1,
            timeout=10,
            message="lock held",
        )
        result = sidecar.run("backup")
        assert result.returncode == 75
        assert sidecar.dumps() == []
    finally:
        holder.kill()
        holder.wait()
        lock.close()


@pytest.mark.parametrize(
    ("schedule", "now", "expected"),
    [
        (
            "30 2 * * *",
            "2026-03-31T01:00:00Z",
            ["2026-03-31T02:30:00Z", "2026-04-01T02:30:00Z", "2026-04-02T02:30:00Z"],
        ),
        (
            "30 2 * * *",
            "2026-03-31T02:30:00Z",
            ["2026-04-01T02:30:00Z", "2026-04-02T02:30:00Z", "2026-04-03T02:30:00Z"],
        ),
        ("0 * * * *", "2026-12-31T23:59:59Z", ["2027-01-01T00:00:00Z", "2027-01-01T01:00:00Z", "2027-01-01T02:00:00Z"]),
        (
            "0 */6 * * *",
            "2026-03-31T05:59:00Z",
            ["2026-03-31T06:00:00Z", "2026-03-31T12:00:00Z", "2026-03-31T18:00:00Z"],
        ),
        # Weekdays only, and the day-of-week names cron knows.
        (
            "15 3 * * mon-fri",
            "2026-12-04T04:00:00Z",
            ["2026-12-07T03:15:00Z", "2026-12-08T03:15:00Z", "2026-12-09T03:15:00Z"],
        ),
        ("0 4 1 * *", "2026-01-31T00:00:00Z", ["2026-02-01T04:00:00Z", "2026-03-01T04:00:00Z", "2026-04-01T04:00:00Z"]),
        # The shorthands of earlier versions still mean what they meant.
        (
            "daily@02:30",
            "2026-03-31T01:00:00Z",
            ["2026-03-31T02:30:00Z", "2026-04-01T02:30:00Z", "2026-04-02T02:30:00Z"],
        ),
        ("hourly@15", "2026-03-31T10:20:00Z", ["2026-03-31T11:15:00Z", "2026-03-31T12:15:00Z", "2026-03-31T13:15:00Z"]),
        ("every:6h", "2026-03-31T05:59:00Z", ["2026-03-31T06:00:00Z", "2026-03-31T12:00:00Z", "2026-03-31T18:00:00Z"]),
        ("every:30m", "2026-03-31T10:00:00Z", ["2026-03-31T10:30:00Z", "2026-03-31T11:00:00Z", "2026-03-31T11:30:00Z"]),
        ("off", "2026-03-31T10:00:00Z", ["off"]),
    ],
)
def test_schedule_is_a_standard_cron_expression(sidecar: Sidecar, schedule: str, now: str, expected: list[str]) -> None:
    result = sidecar.run("backup-scheduler", "--print-next", "3", BACKUP_SCHEDULE=schedule, BACKUP_NOW=now)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == expected


@pytest.mark.parametrize("schedule", ["61 2 * * *", "0 2 * *", "0 2 * * * *", "weekly", "daily@24:00"])
def test_invalid_schedule_is_refused_with_one_readable_line(sidecar: Sidecar, schedule: str) -> None:
    result = sidecar.run("backup-scheduler", "--print-next", "1", BACKUP_SCHEDULE=schedule)
    assert result.returncode == 2
    line = summary(result, "backup-scheduler")
    assert line.startswith(f"backup-scheduler: FAILED BACKUP_SCHEDULE={schedule}")
    assert "5-field cron expression" in line


@pytest.mark.slow
def test_scheduler_catches_up_runs_the_drill_beats_and_stops_on_sigterm(sidecar: Sidecar, tmp_path: Path) -> None:
    sidecar.seed(30)
    heartbeat = tmp_path / "heartbeat"
    # No backup yet: the scheduler backs up at once, then verifies it, then sleeps until 02:30.
    process = sidecar.popen("backup-scheduler", BACKUP_SCHEDULE="30 2 * * *", BACKUP_WAL_CHECK_INTERVAL="1")
    try:
        wait_until(lambda: "tally_backup_last_verify_success" in sidecar.metrics(), timeout=60, message="drill")
        metrics = sidecar.metrics()
        assert metrics["tally_backup_last_verify_success"] == 1
        assert metrics["tally_backup_last_run_success"] == 1
        assert metrics["tally_backup_schedule_interval_seconds"] == 86400
        assert metrics["tally_backup_pitr_enabled"] == 0
        assert len(sidecar.dumps()) == 1

        health = sidecar.run("backup-healthcheck")
        assert health.returncode == 0, health.stdout
        # The textfile is rewritten while the scheduler lives: node_exporter never serves a stale one.
        prom = sidecar.backup_dir / "metrics" / "tally_backup.prom"
        old = time.time() - 600
        os.utime(prom, (old, old))
        wait_until(lambda: prom.stat().st_mtime > old + 60, timeout=30, message="textfile rewritten")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)  # the deadline: without SIGTERM handling it would sleep until 02:30
    finally:
        stop_process(process)  # type: ignore[arg-type]
    assert process.returncode == 0

    os.utime(prom, (old, old))
    stale_metrics = sidecar.run("backup-healthcheck")
    assert stale_metrics.returncode == 1 and "metrics textfile" in stale_metrics.stdout
    os.utime(heartbeat, (old, old))
    stale = sidecar.run("backup-healthcheck")
    assert stale.returncode == 1 and "heartbeat" in stale.stdout


@pytest.mark.slow
def test_catch_up_before_migrations_is_not_a_success_and_is_retried_soon(sidecar: Sidecar, tmp_path: Path) -> None:
    """First `up`: the sidecar starts before `migrate` has created the schema (issue 14)."""
    empty = sidecar.database + "_empty"
    sidecar.sql(f'CREATE DATABASE "{empty}"', "postgres")
    process = sidecar.popen(
        "backup-scheduler", PGDATABASE=empty, BACKUP_SCHEDULE="30 2 * * *", BACKUP_RETRY_INTERVAL="1"
    )
    try:
        wait_until(
            lambda: sidecar.metrics().get("tally_backup_last_run_success") == 0, timeout=30, message="failed run"
        )
        assert sidecar.metrics()["tally_backup_last_success_timestamp_seconds"] == 0
        assert sidecar.dumps() == []
        # The migrations arrive: the retry (not the next 02:30) takes the first backup.
        sidecar.sql(f'DROP DATABASE "{empty}" WITH (FORCE)', "postgres")
        sidecar.sql(f'CREATE DATABASE "{empty}" TEMPLATE "{sidecar.database}"', "postgres")
        wait_until(lambda: sidecar.metrics().get("tally_backup_last_verify_success") == 1, timeout=60, message="retry")
    finally:
        stop_process(process)  # type: ignore[arg-type]
    out = process.stdout.read() if process.stdout else ""
    err = process.stderr.read() if process.stderr else ""
    assert "no schema yet" in out + err
    assert len(sidecar.dumps()) == 1


@pytest.mark.slow
def test_manifest_describes_the_dump_even_while_visits_keep_coming(sidecar: Sidecar, tmp_path: Path) -> None:
    """Totals and dump share one snapshot: rows written between the manifest query and pg_dump's
    start are in neither, so verify still matches."""
    sidecar.seed(100)
    wrapper, started, gate = blocking_pg_dump(tmp_path, str(sidecar.server.bin_dir / "pg_dump"))
    backup = sidecar.popen("backup", PG_DUMP=str(wrapper))
    try:
        wait_until(started.exists, timeout=30, message="backup inside pg_dump")
        sidecar.seed(25, offset=100)  # the app keeps counting after the totals were taken
        with gate.open("w") as release:
            release.write("go\n")
        out, err = backup.communicate(timeout=60)
    finally:
        stop_process(backup)  # type: ignore[arg-type]
    assert backup.returncode == 0, out + err
    assert "visitors=100 " in summary(subprocess.CompletedProcess([], 0, out, err), "backup")
    verified = sidecar.run("verify", "latest")
    assert verified.returncode == 0, verified.stdout + verified.stderr
