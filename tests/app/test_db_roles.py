"""Least-privilege database roles on a real PostgreSQL 15, with password authentication for the roles.

A server of its own: roles are cluster-wide, and these tests create, alter and log in as them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
from sqlalchemy import make_url

from app import roles
from harness import REPO_ROOT
from harness.flask_app import make_config
from harness.gunicorn import migrate
from harness.postgres import PostgresServer
from tests.app.helpers import visits_on_page

PASSWORDS = {
    "DB_APP_PASSWORD": "app-password-0123456789abcdef",
    "DB_BACKUP_PASSWORD": "backup-password-0123456789abcdef",
    "DB_EXPORTER_PASSWORD": "exporter-password-0123456789abcdef",
}
LOGIN_ROLES = (roles.APP, roles.BACKUP, roles.EXPORTER)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    server = PostgresServer.create(max_connections=50)
    # The roles must prove their password (SCRAM); the test's superuser keeps trust.
    hba = server.data_dir / "pg_hba.conf"
    rule = f"host all {','.join(LOGIN_ROLES)} 127.0.0.1/32 scram-sha-256\n"
    hba.write_text(rule + hba.read_text())
    server.execute("SELECT pg_reload_conf()")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def database(server: PostgresServer) -> Iterator[str]:
    name = f"r_{uuid.uuid4().hex[:10]}"
    yield server.create_database(name)
    server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def connect(url: str, user: str, password: str | None = None) -> psycopg2.extensions.connection:
    parsed = make_url(url)
    connection = psycopg2.connect(
        host=parsed.host, port=parsed.port, dbname=parsed.database, user=user, password=password or ""
    )
    connection.autocommit = True
    return connection


def as_role(url: str, role: str) -> psycopg2.extensions.connection:
    variable = next(r.login_variable for r in roles.ROLES if r.name == role)
    assert variable is not None
    return connect(url, role, PASSWORDS[variable])


def migrate_with_roles(url: str, tmp_path: Path, **overrides: str) -> None:
    result = migrate(url, tmp_path, **(PASSWORDS | overrides))
    assert result.returncode == 0, result.stdout + result.stderr


def app_url(url: str, password: str = PASSWORDS["DB_APP_PASSWORD"]) -> str:
    return make_url(url).set(username=roles.APP, password=password).render_as_string(hide_password=False)


def visit(url: str, address: str = "203.0.113.7") -> int:
    from app import create_app

    client = create_app(make_config(app_url(url))).test_client()
    assert client.get("/readyz").status_code == 200
    response = client.get("/", environ_base={"REMOTE_ADDR": address})
    assert response.status_code == 200, response.get_data(as_text=True)
    return visits_on_page(response.get_data(as_text=True))


def refused(connection: psycopg2.extensions.connection, statement: str) -> bool:
    with connection.cursor() as cursor:
        try:
            cursor.execute(statement)
        except psycopg2.errors.InsufficientPrivilege:
            return True
    return False


def test_app_role_counts_visits_but_cannot_change_the_schema_or_run_programs(database: str, tmp_path: Path) -> None:
    migrate_with_roles(database, tmp_path)
    assert visit(database) == 1
    assert visit(database) == 2
    app = as_role(database, roles.APP)
    try:
        with app.cursor() as cursor:
            cursor.execute("SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            assert cursor.fetchone() == (False, False, False)
        for statement in (
            "CREATE TABLE stolen (x int)",
            "ALTER TABLE visitors ADD COLUMN x int",
            "DROP TABLE visitors",
            "TRUNCATE visitors",
            "DELETE FROM visitors",
            "UPDATE alembic_version SET version_num = 'x'",
            "COPY (SELECT 1) TO PROGRAM 'touch /tmp/tally-owned'",
            "COPY visitors FROM PROGRAM 'true'",
            "SELECT pg_read_file('postgresql.conf')",
            "CREATE ROLE intruder SUPERUSER",
            "SET ROLE tally_owner",
        ):
            assert refused(app, statement), statement
    finally:
        app.close()


def test_each_role_logs_in_with_its_own_password_only(database: str, tmp_path: Path) -> None:
    migrate_with_roles(database, tmp_path)
    for role in LOGIN_ROLES:
        as_role(database, role).close()
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            connect(database, role, PASSWORDS["DB_APP_PASSWORD"] if role != roles.APP else "wrong")
    # Changing a secret file and re-running the migration job rotates the password.
    rotated = "rotated-app-password-0123456789"
    migrate_with_roles(database, tmp_path, DB_APP_PASSWORD=rotated)
    connect(database, roles.APP, rotated).close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        as_role(database, roles.APP)
    migrate_with_roles(database, tmp_path)


def test_exporter_sees_statistics_but_no_rows(database: str, tmp_path: Path) -> None:
    migrate_with_roles(database, tmp_path)
    exporter = as_role(database, roles.EXPORTER)
    try:
        with exporter.cursor() as cursor:
            cursor.execute("SELECT pg_has_role(current_user, 'pg_monitor', 'USAGE')")
            assert cursor.fetchone() == (True,)
            cursor.execute("SELECT count(*) FROM pg_stat_database")
        assert refused(exporter, "SELECT * FROM visitors")
        assert refused(exporter, "CREATE TABLE x (y int)")
    finally:
        exporter.close()


def test_database_of_an_older_version_upgrades_in_place(database: str, tmp_path: Path) -> None:
    """Before roles: the superuser migrated and owned everything, and the app counted as the superuser."""
    from app import create_app

    assert migrate(database, tmp_path).returncode == 0
    old_app = create_app(make_config(database)).test_client()
    for _ in range(3):
        assert old_app.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"}).status_code == 200

    migrate_with_roles(database, tmp_path)

    owners = connect(database, "postgres")
    try:
        with owners.cursor() as cursor:
            cursor.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind IN ('r', 'S', 'v')"
            )
            assert cursor.fetchall() == [(roles.OWNER,)]
            cursor.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
            assert cursor.fetchone() == (roles.OWNER,)
    finally:
        owners.close()
    assert visit(database) == 4  # the old visits are kept and the app now counts as its own role


@pytest.mark.slow
def test_backup_role_dumps_and_restores(database: str, tmp_path: Path, server: PostgresServer) -> None:
    """The backup sidecar's own commands, as the backup role: dump, verify, restore (database swap)."""
    migrate_with_roles(database, tmp_path)
    assert visit(database) == 1
    name = make_url(database).database
    assert name is not None
    password_file = tmp_path / "backup_password"
    password_file.write_text(PASSWORDS["DB_BACKUP_PASSWORD"])
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "BACKUP_", "AWS_"))}
    env |= {
        "PATH": f"{server.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        "PGHOST": "127.0.0.1",
        "PGPORT": str(server.port),
        "PGUSER": roles.BACKUP,
        "PGPASSWORD_FILE": str(password_file),
        "PGDATABASE": name,
        "BACKUP_DIR": str(tmp_path / "backups"),
        "BACKUP_LOCK_WAIT": "5",
        "BACKUP_HEARTBEAT_FILE": str(tmp_path / "heartbeat"),
    }
    bin_dir = REPO_ROOT / "backup" / "bin"
    for command in (["backup"], ["verify", "latest"], ["restore", "latest", "--yes", "--drop-old"]):
        result = subprocess.run(
            [str(bin_dir / command[0]), *command[1:]], env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    # The swapped-in database belongs to the schema owner with the app's grants: the app counts at once.
    assert visit(database) == 2
    migrate_with_roles(database, tmp_path)
    assert visit(database) == 3


def test_a_bootstrap_role_that_cannot_create_roles_is_named_as_the_cause(
    database: str, tmp_path: Path, server: PostgresServer
) -> None:
    """A managed server's bootstrap role without CREATEROLE: the operator must read PostgreSQL's own refusal,
    not the aborted transaction that the cleanup would otherwise trip over."""
    name = make_url(database).database
    weak = f"weak_{uuid.uuid4().hex[:8]}"
    server.execute(f"CREATE ROLE {weak} LOGIN")
    server.execute(f'ALTER DATABASE "{name}" OWNER TO {weak}')
    weak_url = make_url(database).set(username=weak).render_as_string(hide_password=False)
    try:
        result = migrate(weak_url, tmp_path, **PASSWORDS)
        assert result.returncode != 0
        assert "InsufficientPrivilege: permission denied" in result.stderr
        assert "current transaction is aborted" not in result.stderr
        tables = server.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=name)
        assert tables == []  # nothing was half-done
    finally:
        server.execute(f'ALTER DATABASE "{name}" OWNER TO postgres')
        server.execute(f"DROP ROLE {weak}")
