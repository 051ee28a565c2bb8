"""Grandfather-father-son retention against a simulated calendar (names carry the UTC time)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from .conftest import Sidecar, summary


def fake_backup(backup_dir: Path, when: dt.datetime) -> str:
    name = "tally-" + when.strftime("%Y%m%dT%H%M%SZ")
    data = name.encode()
    (backup_dir / f"{name}.dump").write_bytes(data)
    (backup_dir / f"{name}.dump.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}.dump\n")
    (backup_dir / f"{name}.manifest").write_text(f"name={name}\n")
    return name


def nightly(backup_dir: Path, first: dt.date, last: dt.date) -> None:
    day = first
    while day <= last:
        fake_backup(backup_dir, dt.datetime.combine(day, dt.time(2, 30)))
        day += dt.timedelta(days=1)
    point_latest(backup_dir)


def point_latest(backup_dir: Path) -> None:
    newest = sorted(backup_dir.glob("tally-*.dump"))[-1]
    latest = backup_dir / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(newest.name)


def kept(backup_dir: Path) -> list[str]:
    return sorted(p.name.removesuffix(".dump").removeprefix("tally-")[:8] for p in backup_dir.glob("tally-*.dump"))


def test_daily_weekly_monthly_for_a_quarter_of_nightly_backups(sidecar: Sidecar) -> None:
    backup_dir = sidecar.backup_dir
    backup_dir.mkdir()
    nightly(backup_dir, dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    fake_backup(backup_dir, dt.datetime(2026, 3, 31, 1, 0))  # an earlier manual backup the same day
    (backup_dir / "notes.txt").write_text("not ours")

    result = sidecar.run("backup-prune")
    assert result.returncode == 0, result.stderr
    # 2026-03-31 is a Tuesday. Daily: the 7 days 03-25..03-31. Weekly (ISO weeks, newest of each):
    # W14 → 03-31, W13 → 03-29, W12 → 03-22, W11 → 03-15. Monthly: 03-31, 02-28, 01-31.
    assert kept(backup_dir) == [
        "20260131",
        "20260228",
        "20260315",
        "20260322",
        "20260325",
        "20260326",
        "20260327",
        "20260328",
        "20260329",
        "20260330",
        "20260331",
    ]
    assert "tally-20260331T010000Z.dump" not in {p.name for p in backup_dir.iterdir()}
    assert summary(result, "backup-prune").startswith("backup-prune: OK removed=80 kept=11")
    # sidecar files go with their dump; foreign files stay
    assert sorted(p.name for p in backup_dir.glob("tally-20260101*")) == []
    assert len(list(backup_dir.glob("*.manifest"))) == 11
    assert len(list(backup_dir.glob("*.sha256"))) == 11
    assert (backup_dir / "notes.txt").exists()


def test_settings_change_what_is_kept(sidecar: Sidecar) -> None:
    backup_dir = sidecar.backup_dir
    backup_dir.mkdir()
    nightly(backup_dir, dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    result = sidecar.run(
        "backup-prune", BACKUP_KEEP_DAILY="2", BACKUP_KEEP_WEEKLY="0", BACKUP_KEEP_MONTHLY="2", BACKUP_KEEP_LAST="0"
    )
    assert result.returncode == 0, result.stderr
    assert kept(backup_dir) == ["20260228", "20260330", "20260331"]


def test_a_gap_in_backups_never_deletes_the_last_good_ones(sidecar: Sidecar) -> None:
    """Retention counts days that have a backup, not calendar days: after weeks of failed
    backups, the next success must not wipe the history."""
    backup_dir = sidecar.backup_dir
    backup_dir.mkdir()
    nightly(backup_dir, dt.date(2026, 1, 1), dt.date(2026, 1, 10))
    sidecar.seed(5)
    result = sidecar.run("backup", BACKUP_NOW="2026-03-01T02:30:00Z")
    assert result.returncode == 0, result.stderr
    # daily: 03-01 and the six newest days before the gap (01-05..01-10); weekly: 03-01 (W09),
    # 01-10 (W02), 01-04 (W01, which began 2025-12-29); monthly: 03-01, 01-10
    assert kept(backup_dir) == [
        "20260104",
        "20260105",
        "20260106",
        "20260107",
        "20260108",
        "20260109",
        "20260110",
        "20260301",
    ]


@pytest.mark.slow
def test_a_real_backup_applies_retention_and_keeps_the_new_one_latest(sidecar: Sidecar) -> None:
    backup_dir = sidecar.backup_dir
    backup_dir.mkdir()
    nightly(backup_dir, dt.date(2026, 1, 1), dt.date(2026, 3, 31))
    sidecar.seed(5)
    result = sidecar.run("backup", BACKUP_NOW="2026-04-01T02:30:00Z")
    assert result.returncode == 0, result.stderr
    # 2026-04-01 (Wed, W14). Daily: 03-26..04-01. Weekly: W14 → 04-01, W13 → 03-29, W12 → 03-22,
    # W11 → 03-15. Monthly: 04-01, 03-31, 02-28, 01-31.
    assert kept(backup_dir) == [
        "20260131",
        "20260228",
        "20260315",
        "20260322",
        "20260326",
        "20260327",
        "20260328",
        "20260329",
        "20260330",
        "20260331",
        "20260401",
    ]
    assert (backup_dir / "latest").resolve().name == "tally-20260401T023000Z.dump"
    assert sidecar.metrics()["tally_backup_files"] == 11


def test_backups_lists_name_size_age_and_marks_latest(sidecar: Sidecar) -> None:
    sidecar.seed(5)
    assert sidecar.run("backup", BACKUP_NOW="2026-04-01T02:30:00Z").returncode == 0
    assert sidecar.run("backup", BACKUP_NOW="2026-04-02T02:30:00Z").returncode == 0
    assert sidecar.run("verify", "latest").returncode == 0
    result = sidecar.run("backups", BACKUP_NOW="2026-04-02T05:00:00Z")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "CREATED", "(UTC)"]
    newest, older = lines[1].split(), lines[2].split()
    assert newest[:2] == ["*", "tally-20260402T023000Z"] and newest[4] == "2h30m" and "ok" in newest
    assert older[0] == "tally-20260401T023000Z" and older[3] == "1d02h" and older[-1] == "never"
    assert newest[5].endswith("KiB")
    assert summary(result, "backups").startswith("backups: 2 dumps, ")
