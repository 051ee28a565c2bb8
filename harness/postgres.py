"""A real PostgreSQL 15 server in a temporary directory, for tests and benchmarks.

initdb/pg_ctl refuse to run as root, so when we are root they run as the ``postgres`` user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2
from sqlalchemy.engine import make_url

from .procs import child_pids, free_port, wait_until
from .tools import find_tool

PG_BIN_CANDIDATES = (Path("/usr/lib/postgresql/15/bin"),)
SUPERUSER = "postgres"


def pg_bin_dir() -> Path:
    initdb = find_tool(
        "initdb", "apt install postgresql-15", *(directory / "initdb" for directory in PG_BIN_CANDIDATES)
    )
    return Path(initdb).resolve().parent


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", SUPERUSER, "--", *command] if os.geteuid() == 0 else command


class _Admin:
    """What tests do with any PostgreSQL server: run SQL as the superuser, make fresh databases."""

    def dsn(self, database: str) -> str:
        raise NotImplementedError

    def url(self, database: str) -> str:
        raise NotImplementedError

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        connection = psycopg2.connect(self.dsn(database))
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return list(cursor.fetchall()) if cursor.description else []
        finally:
            connection.close()

    def create_database(self, name: str) -> str:
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@dataclass
class PostgresServer(_Admin):
    data_dir: Path
    port: int
    bin_dir: Path = field(default_factory=pg_bin_dir)
    socket_dir: Path | None = None
    log_file: Path | None = None
    extra_settings: tuple[str, ...] = ()

    @classmethod
    def create(cls, max_connections: int = 200, extra_settings: tuple[str, ...] = ()) -> PostgresServer:
        base = Path(tempfile.mkdtemp(prefix="tally-pg-"))
        os.chmod(base, 0o755)  # noqa: S103 - the postgres user (runuser) must reach its data dir
        server = cls(
            data_dir=base / "data",
            port=free_port(),
            socket_dir=base,
            log_file=base / "postgres.log",
            extra_settings=(f"max_connections={max_connections}", *extra_settings),
        )
        if os.geteuid() == 0:
            shutil.chown(base, SUPERUSER, SUPERUSER)
        subprocess.run(
            _as_postgres(
                [
                    str(server.bin_dir / "initdb"),
                    "-D",
                    str(server.data_dir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        server.start()
        return server

    def _options(self) -> str:
        settings = [
            "listen_addresses=127.0.0.1",
            f"port={self.port}",
            f"unix_socket_directories={self.socket_dir}",
            "fsync=off",
            "synchronous_commit=off",
            "full_page_writes=off",
            *self.extra_settings,
        ]
        return " ".join(f"-c {setting}" for setting in settings)

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                    "-o",
                    self._options(),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )
        wait_until(self.accepting, timeout=30, message="postgres accepting connections")

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            _as_postgres(
                [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def pids(self) -> list[int]:
        """The postmaster and its children, every backend included: what ``docker pause`` freezes."""
        postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        return [postmaster, *sorted(child_pids(postmaster))]

    def accepting(self) -> bool:
        try:
            psycopg2.connect(self.dsn("postgres"), connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


@dataclass
class ExternalPostgres(_Admin):
    """A server we did not start (GitLab's ``services: postgres``), named by TEST_DATABASE_URL.

    Tests that stop or restart PostgreSQL start a :class:`PostgresServer` of their own instead."""

    admin_url: str

    def url(self, database: str) -> str:
        url = make_url(self.admin_url).set(drivername="postgresql+psycopg2", database=database)
        return url.render_as_string(hide_password=False)

    def dsn(self, database: str) -> str:
        return self.url(database).replace("postgresql+psycopg2", "postgresql", 1)
