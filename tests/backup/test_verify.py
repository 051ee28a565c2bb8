"""verify: the restore drill detects every way a backup can be unusable, and reports it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from harness.procs import free_port, stop_process, wait_until

from .conftest import RUN_TIMEOUT_S, Sidecar, manifest, name_of, summary

pytestmark = pytest.mark.slow  # real backups and restores (pg_dump, pg_restore) per test

NOW = "2026-05-04T02:30:00Z"
NOW_EPOCH = 1777861800


@pytest.fixture
def backed_up(sidecar: Sidecar) -> str:
    sidecar.seed(400)
    result = sidecar.run("backup", BACKUP_NOW=NOW)
    assert result.returncode == 0, result.stderr
    return name_of(result)


def test_verify_restores_into_a_throwaway_database_and_records_success(sidecar: Sidecar, backed_up: str) -> None:
    result = sidecar.run("verify", "latest", BACKUP_NOW=NOW)
    assert result.returncode == 0, result.stdout + result.stderr
    line = summary(result, "verify")
    assert line.startswith(f"verify: OK name={backed_up} revision=") and "visitors=400" in line
    # the throw-away database is gone, the live one untouched
    assert sidecar.databases("_verify") == []
    assert sidecar.sql("SELECT count(*) FROM visitors") == [(400,)]
    assert (sidecar.backup_dir / f"{backed_up}.verify").read_text().startswith("result=ok")
    metrics = sidecar.metrics()
    assert metrics["tally_backup_last_verify_success"] == 1
    assert metrics["tally_backup_last_verify_timestamp_seconds"] == NOW_EPOCH


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", [corrupt, truncate], ids=["corrupted", "truncated"])
def test_damaged_dump_is_detected_and_never_restored(sidecar: Sidecar, backed_up: str, damage) -> None:  # type: ignore[no-untyped-def]
    sidecar.run("verify", "latest")
    assert sidecar.metrics()["tally_backup_last_verify_success"] == 1
    damage(sidecar.backup_dir / f"{backed_up}.dump")

    result = sidecar.run("verify", "latest")
    assert result.returncode == 1
    line = summary(result, "verify")
    assert line.startswith(f"verify: FAILED name={backed_up}") and "checksum mismatch" in line
    assert sidecar.metrics()["tally_backup_last_verify_success"] == 0
    assert "result=failed" in (sidecar.backup_dir / f"{backed_up}.verify").read_text()

    sidecar.seed(3, offset=400)
    result = sidecar.run("restore", "latest", "--yes")
    assert result.returncode == 1
    assert "checksum mismatch" in summary(result, "restore")
    assert sidecar.sql("SELECT count(*) FROM visitors") == [(403,)]


def test_dump_that_restores_but_differs_from_its_manifest_fails_verify(sidecar: Sidecar, backed_up: str) -> None:
    path = sidecar.backup_dir / f"{backed_up}.manifest"
    path.write_text(path.read_text().replace("visitors=400\n", "visitors=401\n"))
    result = sidecar.run("verify", backed_up)
    assert result.returncode == 1
    assert "visitors: expected '401' got '400'" in summary(result, "verify")


def test_damage_that_keeps_a_valid_checksum_is_caught_by_the_totals(sidecar: Sidecar) -> None:
    """A dump of inconsistent data (e.g. written by a buggy app) breaks the counter invariants."""
    sidecar.seed(50)
    sidecar.sql("UPDATE total_shards SET visitors = visitors + 1 WHERE shard = (SELECT min(shard) FROM total_shards)")
    assert sidecar.run("backup").returncode == 0
    result = sidecar.run("verify", "latest")
    assert result.returncode == 1
    assert "invariant: count(visitors)=50 != sum(total_shards.visitors)=51" in summary(result, "verify")


def test_verify_of_an_old_backup_does_not_move_the_alerting_metrics(sidecar: Sidecar, backed_up: str) -> None:
    assert sidecar.run("backup", BACKUP_NOW="2026-05-05T02:30:00Z").returncode == 0
    corrupt(sidecar.backup_dir / f"{backed_up}.dump")
    assert sidecar.run("verify", backed_up).returncode == 1
    assert "tally_backup_last_verify_success" not in sidecar.metrics()
    assert sidecar.run("verify", "latest").returncode == 0
    assert sidecar.metrics()["tally_backup_last_verify_success"] == 1


def test_metrics_file_after_backup(sidecar: Sidecar, backed_up: str) -> None:
    metrics = sidecar.metrics()
    size = (sidecar.backup_dir / f"{backed_up}.dump").stat().st_size
    recorded = manifest(sidecar.backup_dir, backed_up)
    assert metrics["tally_backup_last_success_timestamp_seconds"] == NOW_EPOCH
    assert metrics["tally_backup_last_size_bytes"] == size
    assert metrics["tally_backup_last_visitors"] == 400
    assert metrics["tally_backup_last_visits"] == int(recorded["visits"])
    assert metrics["tally_backup_last_run_success"] == 1
    # Seconds (not ms, not a timestamp): at most the run's own deadline, whatever the machine's speed.
    assert 0 < metrics["tally_backup_last_duration_seconds"] <= RUN_TIMEOUT_S
    assert metrics["tally_backup_files"] == 1
    assert metrics["tally_backup_last_verify_timestamp_seconds"] == 0  # not verified yet
    assert "tally_backup_last_verify_success" not in metrics

    sidecar.seed(2000, offset=400)
    assert sidecar.run("backup", BACKUP_NOW="2026-05-05T02:30:00Z").returncode == 0
    metrics = sidecar.metrics()
    assert metrics["tally_backup_previous_size_bytes"] == size
    assert metrics["tally_backup_last_size_bytes"] > size
    assert metrics["tally_backup_files"] == 2


def test_node_exporter_serves_the_metrics_file(sidecar: Sidecar, backed_up: str, tmp_path: Path) -> None:
    """The textfile is what Prometheus sees through node_exporter: it must parse there."""
    port = free_port()
    log = (tmp_path / "node_exporter.log").open("wb")
    process = subprocess.Popen(
        [
            "prometheus-node-exporter",
            f"--web.listen-address=127.0.0.1:{port}",
            "--collector.disable-defaults",
            "--collector.textfile",
            f"--collector.textfile.directory={sidecar.backup_dir / 'metrics'}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    try:
        body = wait_until(
            lambda: requests.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text,
            timeout=20,
            message="node_exporter",
        )
    finally:
        stop_process(process)
    size = (sidecar.backup_dir / f"{backed_up}.dump").stat().st_size
    served = {
        line.split()[0]: float(line.split()[1]) for line in body.splitlines() if line and not line.startswith("#")
    }
    assert served["tally_backup_last_success_timestamp_seconds"] == NOW_EPOCH
    assert served["tally_backup_last_size_bytes"] == size
    assert served["node_textfile_scrape_error"] == 0
