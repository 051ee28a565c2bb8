"""Managed PostgreSQL for real: every database client of the Swarm stack, with exactly the environment
swarm/render.py gives it for TALLY_DATABASE_HOST, against a PostgreSQL 15 that behaves like a provider's:
TLS only (`hostssl` lines, no `host` line), a certificate for `localhost` signed by a CA this module makes,
and a bootstrap role that is not a superuser (CREATEROLE CREATEDB, as RDS's or Cloud SQL's master user).

The Swarm secrets are files here: what the stack mounts at /run/secrets/<name> is <dir>/<name>, the only
rewrite besides the container paths of scratch directories. `localhost` resolves to 127.0.0.1, where the
server listens; libpq and lib/pq check the certificate's name against it (sslmode=verify-full).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from app.config import ConfigError, load_config
from app.seed import seed_visitors
from harness import REPO_ROOT
from harness.gunicorn import run_gunicorn
from harness.observability import start_postgres_exporter
from harness.postgres import SUPERUSER, PostgresServer
from harness.procs import wait_until
from harness.tools import find_tool
from tests.stack.stackutil import render_stack

HOST = "localhost"  # the server certificate's only name
DATABASE = "tally"
BOOTSTRAP = "tally"  # the role the provider creates (compose's POSTGRES_USER)
SECRETS = "/run/secrets/"
# Clients: TLS and a password only. The fixture itself administers over the Unix socket, as a provider's
# console would; it is no client of the stack.
PG_HBA = f"""\
local all {SUPERUSER} trust
hostssl all all 127.0.0.1/32 scram-sha-256
"""
STACK_SECRETS = ("postgres_password", "secret_key", "db_app_password", "db_backup_password", "db_exporter_password")
# Container paths of scratch directories; the test gives each its own directory.
SCRATCH = {
    "PROMETHEUS_MULTIPROC_DIR": "prometheus-multiproc",
    "DRAIN_MARKER": "draining",
    "BACKUP_DIR": "backups",
    "BACKUP_METRICS_DIR": "backup-metrics",
}


class ProviderServer(PostgresServer):
    """A PostgresServer administered through its socket: TCP is for TLS clients with a password."""

    def dsn(self, database: str) -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={database}"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"


def openssl(directory: Path, *args: str) -> None:
    subprocess.run([find_tool("openssl"), *args], cwd=directory, check=True, capture_output=True, timeout=30)


def certificate_authority(directory: Path, name: str) -> Path:
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(directory, "req", "-x509", *key, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}")
    return directory / f"{name}.crt"


def server_certificate(directory: Path, ca: str, name: str) -> tuple[Path, Path]:
    key = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(directory, "req", "-new", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={name}")
    (directory / "san.ext").write_text(f"subjectAltName=DNS:{name}\n")
    openssl(
        directory,
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-days", "2", "-extfile", "san.ext", "-out", "server.crt",
    )  # fmt: skip
    return directory / "server.crt", directory / "server.key"


@dataclass
class Provider:
    server: ProviderServer
    secrets: Path  # the directory standing in for /run/secrets
    wrong_ca: Path  # a CA that did not sign the server's certificate
    stack: dict[str, Any]  # swarm/render.py's stack for this server

    def env(self, service: str, scratch: Path, **overrides: str) -> dict[str, str]:
        """The service's environment as the stack gives it, secrets and scratch paths mapped to files here."""
        rendered = self.stack["services"][service]["environment"]
        env = {"PATH": f"{self.server.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(scratch)}
        for name, value in rendered.items():
            if value is None:
                continue
            env[name] = str(value).replace(SECRETS, f"{self.secrets}/")
        for name, directory in SCRATCH.items():
            if name in env:
                env[name] = str(scratch / directory)
        return env | overrides

    def password(self, name: str) -> str:
        return (self.secrets / name).read_text()

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        return self.server.execute(statement, DATABASE)


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    certs = tmp_path_factory.mktemp("certs")
    certificate_authority(certs, "provider-ca")
    wrong_ca = certificate_authority(certs, "other-ca")
    crt, key = server_certificate(certs, "provider-ca", HOST)
    server = ProviderServer.create()
    try:
        for source in (crt, key):
            target = server.data_dir / source.name
            shutil.copy(source, target)
            target.chmod(0o600)
            if os.geteuid() == 0:
                shutil.chown(target, SUPERUSER, SUPERUSER)
        (server.data_dir / "pg_hba.conf").write_text(PG_HBA)
        server.execute("ALTER SYSTEM SET ssl = on")  # server.crt/server.key in the data directory: the defaults
        server.execute("SELECT pg_reload_conf()")
        wait_until(lambda: server.execute("SHOW ssl") == [("on",)], timeout=10, message="ssl on after reload")
        secret_dir = tmp_path_factory.mktemp("secrets")
        for name in STACK_SECRETS:
            (secret_dir / name).write_text(secrets.token_urlsafe(32))
        shutil.copy(certs / "provider-ca.crt", secret_dir / "db_ca")
        password = (secret_dir / "postgres_password").read_text()
        server.execute(f"CREATE ROLE {BOOTSTRAP} LOGIN CREATEROLE CREATEDB PASSWORD '{password}'")
        server.execute(f"CREATE DATABASE {DATABASE} OWNER {BOOTSTRAP}")
        stack = render_stack(
            tmp_path_factory.mktemp("swarm"), {"TALLY_DATABASE_HOST": HOST, "TALLY_DATABASE_PORT": str(server.port)}
        )
        yield Provider(server=server, secrets=secret_dir, wrong_ca=wrong_ca, stack=stack)
    finally:
        server.destroy()


def flask_db_upgrade(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "db", "upgrade"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def sidecar(env: dict[str, str], command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One of the backup sidecar's commands, run natively as its container runs it."""
    return subprocess.run(
        [str(REPO_ROOT / "backup" / "bin" / command), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def migrated(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> Provider:
    result = flask_db_upgrade(provider.env("migrate", tmp_path_factory.mktemp("migrate")))
    assert result.returncode == 0, f"migrate failed:\n{result.stdout}\n{result.stderr}"
    return provider


@pytest.mark.slow
def test_migrations_run_and_rerun_as_the_providers_bootstrap_role(migrated: Provider, tmp_path: Path) -> None:
    assert migrated.sql("SELECT rolsuper FROM pg_roles WHERE rolname = 'tally'") == [(False,)]
    assert migrated.sql("SELECT count(*) FROM alembic_version") == [(1,)]
    # Every deploy runs the job again: the roles exist now and are altered, not created.
    result = flask_db_upgrade(migrated.env("migrate", tmp_path))
    assert result.returncode == 0, f"second migrate failed:\n{result.stdout}\n{result.stderr}"
    owners = migrated.sql("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    assert owners == [("tally_owner",)]


@pytest.mark.slow
def test_the_app_counts_visits_over_verified_tls(migrated: Provider, tmp_path: Path) -> None:
    env = migrated.env("app", tmp_path)
    for name in ("PORT", "METRICS_PORT"):  # the container's ports; run_gunicorn takes free ones
        env.pop(name)
    (tmp_path / SCRATCH["PROMETHEUS_MULTIPROC_DIR"]).mkdir()
    # One worker is enough to prove the path and starts in half the time.
    gunicorn = run_gunicorn(env | {"WEB_CONCURRENCY": "1"}, tmp_path / "gunicorn.log")
    try:
        assert requests.get(gunicorn.url + "/readyz", timeout=5).status_code == 200, gunicorn.log()
        session = requests.Session()
        figures = []
        for _ in range(2):
            page = session.get(gunicorn.url + "/", timeout=5)
            assert page.status_code == 200, gunicorn.log()
            match = re.search(r'class="visit-figure">(\d+)<', page.text)
            assert match, page.text[:500]
            figures.append(int(match.group(1)))
        assert figures == [1, 2]
        sessions = migrated.sql(
            "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = 'tally_app'"
        )
        assert sessions and all(ssl for (ssl,) in sessions), sessions
    finally:
        gunicorn.stop()


@pytest.mark.slow
def test_backups_dump_verify_and_restore_over_tls(migrated: Provider, tmp_path: Path) -> None:
    seed_visitors(migrated.server.url(DATABASE), 25, offset=1000)
    before = migrated.sql("SELECT count(*) FROM visitors")
    env = migrated.env("backup", tmp_path)
    assert env["PGSSLMODE"] == "verify-full"
    for command in (["backup"], ["verify", "latest"], ["restore", "latest", "--yes"]):
        if command[0] == "restore":
            # Visitors after the dump: the restore must take them away again.
            seed_visitors(migrated.server.url(DATABASE), 5, offset=2000)
            assert migrated.sql("SELECT count(*) FROM visitors") != before
        result = sidecar(env, *command)
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
        assert f"{command[0]}: OK" in result.stdout, result.stdout
    assert migrated.sql("SELECT count(*) FROM visitors") == before


def exporter_pg_up(env: dict[str, str], workdir: Path, expected: str) -> str:
    """Waits for the postgres-exporter started with ``env`` to report ``pg_up <expected>``; its log."""
    exporter = start_postgres_exporter(workdir, environment=env)
    try:

        def reported() -> bool:
            metrics = requests.get(exporter.url + "/metrics", timeout=5).text
            return re.search(rf"^pg_up {expected}$", metrics, re.M) is not None

        wait_until(reported, timeout=30, message=f"pg_up {expected}")
    finally:
        exporter.stop()
    return exporter.log()


@pytest.mark.slow
def test_the_exporter_scrapes_over_tls(migrated: Provider, tmp_path: Path) -> None:
    exporter_pg_up(migrated.env("postgres-exporter", tmp_path), tmp_path, "1")


# --------------------------------------------------------------------------- what must be refused


def app_engine_error(provider: Provider, tmp_path: Path, url_change: dict[str, Any]) -> str:
    """The error of the app's own engine (its config, its URL) when the URL is changed as given."""
    config = load_config(provider.env("app", tmp_path))
    url: URL = config.database_url
    url = url.set(**url_change)
    engine = create_engine(url, poolclass=NullPool)
    with pytest.raises(OperationalError) as error, engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return str(error.value)


@pytest.mark.slow
def test_plain_tcp_is_refused(provider: Provider) -> None:
    password = provider.password("postgres_password")
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(
            host=HOST, port=provider.server.port, user=BOOTSTRAP, password=password, dbname=DATABASE, sslmode="disable"
        )


@pytest.mark.slow
def test_a_certificate_from_another_ca_is_refused(provider: Provider, tmp_path: Path) -> None:
    config = load_config(provider.env("migrate", tmp_path))
    query = {**config.database_url.query, "sslrootcert": str(provider.wrong_ca)}
    assert "certificate verify failed" in app_engine_error(provider, tmp_path, {"query": query})
    result = sidecar(provider.env("backup", tmp_path, PGSSLROOTCERT=str(provider.wrong_ca)), "backup")
    assert result.returncode == 1
    assert "certificate verify failed" in result.stdout + result.stderr
    exporter = provider.env("postgres-exporter", tmp_path)
    uri = exporter["DATA_SOURCE_URI"].replace(f"{provider.secrets}/db_ca", str(provider.wrong_ca))
    log = exporter_pg_up(exporter | {"DATA_SOURCE_URI": uri}, tmp_path, "0")
    assert "certificate signed by unknown authority" in log


@pytest.mark.slow
def test_a_name_the_certificate_does_not_hold_is_refused(provider: Provider, tmp_path: Path) -> None:
    # 127.0.0.1 reaches the same server, but the certificate names only localhost.
    error = app_engine_error(provider, tmp_path, {"host": "127.0.0.1"})
    assert 'does not match host name "127.0.0.1"' in error
    result = sidecar(provider.env("backup", tmp_path, PGHOST="127.0.0.1"), "backup")
    assert result.returncode == 1
    assert "does not match host name" in result.stdout + result.stderr
    exporter = provider.env("postgres-exporter", tmp_path)
    uri = exporter["DATA_SOURCE_URI"].replace(f"{HOST}:", "127.0.0.1:")
    log = exporter_pg_up(exporter | {"DATA_SOURCE_URI": uri}, tmp_path, "0")
    assert "cannot validate certificate for 127.0.0.1" in log


def test_config_refuses_a_verified_url_without_its_ca_file(tmp_path: Path) -> None:
    base = {"SECRET_KEY": "k" * 40, "TALLY_ENV": "production"}
    url = f"postgresql://tally_app@db.example.com:5432/tally?sslmode=verify-full&sslrootcert={tmp_path}/db_ca"
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: sslrootcert .*db_ca cannot be read"):
        load_config({**base, "DATABASE_URL": url})
    with pytest.raises(ConfigError, match=r"^DATABASE_URL: sslmode must be one of"):
        load_config({**base, "DATABASE_URL": url.replace("verify-full", "verify_full")})
    (tmp_path / "db_ca").write_text("a CA\n")
    assert load_config({**base, "DATABASE_URL": url}).database_url.query["sslmode"] == "verify-full"
