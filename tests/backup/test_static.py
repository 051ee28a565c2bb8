"""Static checks of the sidecar: scripts lint clean, the image and its compose service agree with
the rest of the stack, and every setting the scripts read is documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BACKUP = REPO / "backup"
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
    "backup-metrics-http",
}


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert found, f"{name} is not installed (scripts/install-test-deps.sh)"
    return found


@pytest.mark.slow
def test_shellcheck_clean() -> None:
    result = subprocess.run(
        [tool("shellcheck"), *map(str, SCRIPTS), *map(str, LIBS)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_command_is_an_executable_bash_script() -> None:
    assert {path.name for path in SCRIPTS} == COMMANDS
    for path in SCRIPTS:
        assert os.access(path, os.X_OK), f"{path} is not executable"
        assert path.read_text().startswith("#!/usr/bin/env bash\n"), path


def test_hadolint_clean() -> None:
    result = subprocess.run([tool("hadolint"), str(BACKUP / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_the_servers_postgres_version_and_runs_the_scheduler_as_non_root() -> None:
    dockerfile = (BACKUP / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", dockerfile, re.MULTILINE)
    assert base
    server = yaml.safe_load((REPO / "compose" / "postgres.yaml").read_text())["services"]["postgres"]["image"]
    assert base.group(1) == server, "backup image and postgres server must be the same PostgreSQL version"
    assert re.search(r"^USER 999:999$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["backup-scheduler"]' in dockerfile
    assert re.search(r"^CMD \[\]$", dockerfile, re.MULTILINE), "the base image's CMD would become an argument"
    assert "STOPSIGNAL SIGTERM" in dockerfile
    assert "HEALTHCHECK" in dockerfile and '"backup-healthcheck"' in dockerfile
    for package in ("age", "awscli", "socat"):
        assert re.search(rf"apt-get install .*\b{package}\b", dockerfile), package


def compose_service() -> dict[str, Any]:
    service: dict[str, Any] = yaml.safe_load((REPO / "compose" / "backup.yaml").read_text())["services"]["backup"]
    return service


def test_compose_service_wiring() -> None:
    svc = compose_service()
    assert svc["build"]["context"] == "../backup"
    assert svc["user"] == "999:999"
    assert svc["extends"] == {"file": "common.yaml", "service": "hardened"}
    common = yaml.safe_load((REPO / "compose" / "common.yaml").read_text())["services"]["hardened"]
    assert common["read_only"] is True and common["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in common["security_opt"]
    assert any(entry.startswith("/tmp:") for entry in svc["tmpfs"])
    password_file = svc["environment"]["PGPASSWORD_FILE"]
    assert password_file == "/run/secrets/postgres_password"
    # The password file reaches the container either as a compose secret or as a read-only mount.
    mounted = {v["target"]: v for v in svc.get("volumes", []) if isinstance(v, dict)}
    assert "postgres_password" in svc.get("secrets", []) or mounted[password_file].get("read_only") is True
    assert svc["environment"]["PGHOST"] == "postgres" and svc["environment"]["PGDATABASE"] == "tally"
    assert "backups:/backups" in svc["volumes"]
    assert "backups" in yaml.safe_load((REPO / "compose" / "backup.yaml").read_text())["volumes"]
    assert sorted(svc["networks"]) == ["backend", "monitoring"]
    assert svc["depends_on"]["postgres"] == {"condition": "service_healthy"}
    assert svc["healthcheck"]["test"] == ["CMD", "backup-healthcheck"]
    assert svc["deploy"]["resources"]["limits"]["memory"]
    assert svc["init"] is True


def test_prometheus_scrapes_the_port_the_sidecar_serves() -> None:
    port = compose_service()["environment"]["BACKUP_METRICS_PORT"]
    config = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["backup"]["static_configs"] for t in sc["targets"]]
    assert targets == [f"backup:{port}"]
    assert jobs["backup"].get("metrics_path", "/metrics") == "/metrics"


def test_every_setting_the_scripts_read_is_documented() -> None:
    source = "\n".join(path.read_text() for path in [*SCRIPTS, *LIBS])
    settings = set(re.findall(r"\$\{?(BACKUP_[A-Z_]+)", source)) - {"BACKUP_NOW"}
    docs = (REPO / "docs" / "backup-restore.md").read_text()
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
    rules = "\n".join(p.read_text() for p in (REPO / "prometheus").rglob("*.yml") if "tests" not in p.parts)
    used = set(re.findall(r"\btally_backup_\w+", rules))
    assert used <= written, f"rules use metrics the sidecar never writes: {sorted(used - written)}"
