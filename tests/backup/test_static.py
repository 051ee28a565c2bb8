"""Static checks of the sidecar: scripts lint clean, the image and its compose service agree with
the rest of the stack, and every setting the scripts read is documented."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

import pytest
import yaml

from harness import REPO_ROOT
from harness.tools import find_tool

BACKUP = REPO_ROOT / "backup"
SCRIPTS = sorted((BACKUP / "bin").iterdir())
LIBS = sorted((BACKUP / "lib").glob("*.sh"))
COMMANDS = {
    "backup",
    "backups",
    "restore",
    "verify",
    "backup-scheduler",
    "backup-healthcheck",
    "backup-prune",
    "backup-offsite",
    "backup-base",
}


@pytest.mark.slow
def test_shellcheck_clean() -> None:
    result = subprocess.run(
        [find_tool("shellcheck"), *map(str, SCRIPTS), *map(str, LIBS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_an_executable_bash_script() -> None:
    assert {path.name for path in SCRIPTS} == COMMANDS
    for path in SCRIPTS:
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), path


def test_hadolint_clean() -> None:
    result = subprocess.run(
        [find_tool("hadolint"), str(BACKUP / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_the_servers_postgres_version_and_runs_the_scheduler_as_non_root() -> None:
    dockerfile = (BACKUP / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base
    server = yaml.safe_load((REPO_ROOT / "compose" / "postgres.yaml").read_text())["services"]["postgres"]["image"]
    assert base.group(1) == server, "backup image and postgres server must be the same PostgreSQL version"
    assert re.search(r"^USER 999:999$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["backup-scheduler"]' in dockerfile
    assert re.search(r"^CMD \[\]$", dockerfile, re.MULTILINE), "the base image's CMD would become an argument"
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert "HEALTHCHECK" in dockerfile and '"backup-healthcheck"' in dockerfile
    # Its source label is the repository CI builds from, as for the app image (no URL written here).
    assert re.search(r'^ARG SOURCE_URL=""$', dockerfile, re.MULTILINE)
    assert 'org.opencontainers.image.source="${SOURCE_URL}"' in dockerfile
    for package in ("age", "awscli", "python3-croniter"):
        assert re.search(rf"apt-get install .*\b{package}\b", dockerfile), package


def compose_service() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose" / "backup.yaml").read_text())["services"]["backup"]
    return service


def test_compose_service_wiring() -> None:
    svc = compose_service()
    assert svc["build"]["context"] == "../backup"
    assert svc["user"] == "999:999"
    assert svc["extends"] == {"file": "common.yaml", "service": "hardened"}
    common = yaml.safe_load((REPO_ROOT / "compose" / "common.yaml").read_text())["services"]["hardened"]
    assert common["read_only"] is True and common["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in common["security_opt"]
    assert any(entry.startswith("/tmp:") for entry in svc["tmpfs"])
    password_file = svc["environment"]["PGPASSWORD_FILE"]
    # Its own role's password (app/roles.py), never the superuser's.
    assert password_file == "/run/secrets/db_backup_password"
    assert svc["environment"]["PGUSER"] == "tally_backup"
    # The password file reaches the container either as a compose secret or as a read-only mount.
    mounted = {v["target"]: v for v in svc.get("volumes", []) if isinstance(v, dict)}
    assert "db_backup_password" in svc.get("secrets", []) or mounted[password_file].get("read_only") is True
    assert svc["environment"]["PGHOST"] == "postgres" and svc["environment"]["PGDATABASE"] == "tally"
    assert "backups:/backups" in svc["volumes"]
    assert "backups" in yaml.safe_load((REPO_ROOT / "compose" / "backup.yaml").read_text())["volumes"]
    assert sorted(svc["networks"]) == ["backend"]
    assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert svc["healthcheck"]["test"] == ["CMD", "backup-healthcheck"]
    assert svc["deploy"]["resources"]["limits"]["memory"]
    assert svc["init"] is True


def test_node_exporter_reads_the_textfile_the_sidecar_writes() -> None:
    """The metrics reach Prometheus through node-exporter's textfile collector (job "node"): the
    sidecar writes into a volume that node-exporter mounts read-only and names in its flags."""
    svc = compose_service()
    metrics_dir = svc["environment"]["BACKUP_METRICS_DIR"]
    assert f"backup-metrics:{metrics_dir}" in svc["volumes"]
    monitoring = yaml.safe_load((REPO_ROOT / "compose" / "monitoring.yaml").read_text())["services"]["node-exporter"]
    flag = next(a for a in monitoring["command"] if a.startswith("--collector.textfile.directory="))
    assert f"backup-metrics:{flag.split('=', 1)[1]}:ro" in monitoring["volumes"]
    config = yaml.safe_load((REPO_ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "backup" not in jobs and jobs["node"]["static_configs"][0]["targets"] == ["node-exporter:9100"]
    # The image creates the directory node-exporter's uid can read, so a fresh volume inherits it.
    assert "install -d -o postgres -g postgres -m 0755 /metrics" in (BACKUP / "Dockerfile").read_text()
    assert "socat" not in (BACKUP / "Dockerfile").read_text()


def test_postgres_accepts_replication_from_the_sidecar() -> None:
    """pg_receivewal/pg_basebackup connect over the backend network as PGUSER: the official image's
    pg_hba.conf allows replication from localhost only, so compose points postgres at ours."""
    postgres = yaml.safe_load((REPO_ROOT / "compose" / "postgres.yaml").read_text())["services"]["postgres"]
    command = postgres["command"]
    hba = command[
        command.index("hba_file=/etc/postgresql/pg_hba.conf") - 1 : command.index(
            "hba_file=/etc/postgresql/pg_hba.conf"
        )
        + 1
    ]
    assert hba == ["-c", "hba_file=/etc/postgresql/pg_hba.conf"]
    assert "../postgres/pg_hba.conf:/etc/postgresql/pg_hba.conf:ro" in postgres["volumes"]
    user = compose_service()["environment"]["PGUSER"]
    lines = [
        line.split()
        for line in (REPO_ROOT / "postgres" / "pg_hba.conf").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ["host", "replication", user, "all", "scram-sha-256"] in lines
    # Password authentication for everything that is not local, as the image has it.
    assert lines[-1] == ["host", "all", "all", "all", "scram-sha-256"]


def test_point_in_time_restore_service_mounts_the_data_directory_and_never_starts_by_itself() -> None:
    services = yaml.safe_load((REPO_ROOT / "compose" / "backup.yaml").read_text())["services"]
    pitr = services["restore-pitr"]
    assert pitr["profiles"] == ["restore"]
    assert pitr["entrypoint"] == ["restore"]
    assert pitr["extends"] == {"file": "common.yaml", "service": "oneshot"}
    data = yaml.safe_load((REPO_ROOT / "compose" / "postgres.yaml").read_text())["services"]["postgres"]["volumes"][0]
    assert data == f"postgres-data:{pitr['environment']['PGDATA']}"
    assert data in pitr["volumes"] and "backups:/backups" in pitr["volumes"]
    # The long-running sidecar never mounts the live data directory.
    assert not any("postgres-data" in str(v) for v in services["backup"]["volumes"])


def test_every_setting_the_scripts_read_is_documented() -> None:
    source = "\n".join(path.read_text() for path in [*SCRIPTS, *LIBS])
    settings = set(re.findall(r"\$\{?(BACKUP_[A-Z_]+)", source)) - {"BACKUP_NOW"}
    docs = (REPO_ROOT / "docs" / "backup-restore.md").read_text()
    missing = sorted(name for name in settings if name not in docs)
    assert not missing, f"docs/backup-restore.md does not mention {missing}"


def test_metric_names_the_alerts_use_are_written() -> None:
    common = (BACKUP / "lib" / "common.sh").read_text()
    written = {f"tally_backup_{name}" for name in re.findall(r"^\s+metric (\w+) ", common, re.MULTILINE)}
    contract = {
        "tally_backup_last_success_timestamp_seconds",
        "tally_backup_last_duration_seconds",
        "tally_backup_last_size_bytes",
        "tally_backup_last_verify_success",
        "tally_backup_last_verify_timestamp_seconds",
    }
    assert contract <= written
    rules = "\n".join(p.read_text() for p in (REPO_ROOT / "prometheus").rglob("*.yml") if "tests" not in p.parts)
    used = set(re.findall(r"\btally_backup_\w+", rules))
    assert used <= written, f"rules use metrics the sidecar never writes: {sorted(used - written)}"
