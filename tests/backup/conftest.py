"""Fixtures for the backup sidecar tests: the scripts run natively, as the container runs them,
against the session PostgreSQL 15 with the schema created by the app's own migrations."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from app.seed import seed_visitors
from harness import REPO_ROOT
from harness.gunicorn import migrate
from harness.postgres import SUPERUSER, PostgresServer

BIN = REPO_ROOT / "backup" / "bin"
TEMPLATE = "tally_backup_template"
RUN_TIMEOUT_S = 120  # deadline of one sidecar command


def run_sidecar(
    command: str, *args: str, env: dict[str, str], timeout: float = RUN_TIMEOUT_S, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """One sidecar command from backup/bin, as the container runs it, with its output captured."""
    return subprocess.run(
        [str(BIN / command), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False, **popen
    )


@pytest.fixture(scope="session")
def backup_template(pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database migrated to head once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    url = pg_server.create_database(TEMPLATE)
    result = migrate(url, tmp_path_factory.mktemp("migrate"))
    assert result.returncode == 0, f"migrations failed:\n{result.stdout}\n{result.stderr}"
    return TEMPLATE


@dataclass
class Sidecar:
    """One test's database and backup directory, and the sidecar commands bound to them."""

    server: PostgresServer
    database: str
    backup_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(self, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_sidecar(command, *args, env=self.env | env)

    def popen(self, command: str, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(BIN / command), *args],
            env=self.env | env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def connect(self, database: str | None = None) -> psycopg2.extensions.connection:
        connection = psycopg2.connect(self.server.dsn(database or self.database))
        connection.autocommit = True
        return connection

    def sql(
        self, statement: str, database: str | None = None, params: tuple[object, ...] = ()
    ) -> list[tuple[object, ...]]:
        connection = self.connect(database)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params or None)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def seed(self, visitors: int, offset: int = 0) -> None:
        seed_visitors(self.server.url(self.database), visitors, offset)

    def snapshot(self, database: str | None = None) -> dict[str, list[tuple[object, ...]]]:
        """Everything a restore must bring back: per-visitor rows, totals, daily rows, revision."""
        return {
            "visitors": self.sql("SELECT * FROM visitors ORDER BY visitor_key", database),
            "totals": self.sql("SELECT * FROM total_shards ORDER BY shard", database),
            "daily": self.sql("SELECT * FROM daily_shards ORDER BY day, shard", database),
            "revision": self.sql("SELECT version_num FROM alembic_version", database),
        }

    def databases(self, suffix: str) -> list[tuple[object, ...]]:
        """Databases named after this test's one (scratch, restore and kept previous databases)."""
        return self.sql(
            "SELECT datname, datallowconn FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            "postgres",
            (self.database + suffix,),
        )

    def dumps(self) -> list[str]:
        return sorted(p.name for p in self.backup_dir.glob("*.dump"))

    def metrics(self) -> dict[str, float]:
        text = (self.backup_dir / "metrics" / "tally_backup.prom").read_text()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.split()
                values[name] = float(value)
        return values


def summary(result: subprocess.CompletedProcess[str], command: str) -> str:
    """The last stdout line, which every command prints as its one-line summary."""
    lines = [line for line in result.stdout.splitlines() if line.startswith(f"{command}: ")]
    assert lines, f"no summary line from {command}:\nstdout={result.stdout}\nstderr={result.stderr}"
    return lines[-1]


def manifest(backup_dir: Path, name: str) -> dict[str, str]:
    text = (backup_dir / f"{name}.manifest").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def name_of(result: subprocess.CompletedProcess[str]) -> str:
    match = re.search(r"name=(\S+)", result.stdout)
    assert match, result.stdout + result.stderr
    return match.group(1)


@pytest.fixture
def sidecar(pg_server: PostgresServer, backup_template: str, tmp_path: Path) -> Iterator[Sidecar]:
    database = f"tally_{uuid.uuid4().hex[:10]}"
    pg_server.execute(f'CREATE DATABASE "{database}" TEMPLATE "{backup_template}"')
    backup_dir = tmp_path / "backups"
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "BACKUP_", "AWS_"))}
    env.update(
        PATH=f"{pg_server.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        PGHOST="127.0.0.1",
        PGPORT=str(pg_server.port),
        PGUSER=SUPERUSER,
        PGDATABASE=database,
        BACKUP_DIR=str(backup_dir),
        BACKUP_PREFIX="tally",
        BACKUP_LOCK_WAIT="5",
        BACKUP_HEARTBEAT_FILE=str(tmp_path / "heartbeat"),
        # WAL streaming needs a server of its own (test_pitr.py): never a slot on the shared one.
        BACKUP_PITR="false",
    )
    yield Sidecar(server=pg_server, database=database, backup_dir=backup_dir, env=env)
    rows = pg_server.execute(f"SELECT datname FROM pg_database WHERE datname LIKE '{database}%'")  # noqa: S608
    for (name,) in rows:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
