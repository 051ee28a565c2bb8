"""PostgreSQL roles: each client of the database logs in with only what it needs.

The official postgres image makes ``POSTGRES_USER`` (``tally``) the bootstrap superuser. Only the
migration job keeps using it: on every run it creates or updates the roles below (idempotently, with
the passwords from their secret files, so editing a file rotates a password), hands every object of
the schema to the owner role, runs the migrations *as* that owner and grants the app its tables. The
same steps upgrade a database made by an older version, where the superuser owned everything.

To give a role more, change its ``attributes`` or ``member_of`` here, or add a ``Role``; the next
migration run applies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import encrypt_password
from sqlalchemy.engine import Connection

OWNER = "tally_owner"
APP = "tally_app"
BACKUP = "tally_backup"
EXPORTER = "tally_exporter"

_NO_ADMIN = "NOSUPERUSER NOCREATEROLE NOBYPASSRLS"
_NOTHING_SPECIAL = f"{_NO_ADMIN} NOREPLICATION"
# A managed server's bootstrap role (CREATEROLE CREATEDB, no superuser) may not even name these; the roles it
# creates have none of them anyway. The backup role then lacks REPLICATION: no WAL streaming there, the
# provider's own point-in-time recovery instead (docs/scaling.md, "Managed PostgreSQL").
_SUPERUSER_ONLY = frozenset({"SUPERUSER", "NOSUPERUSER", "REPLICATION", "NOREPLICATION", "BYPASSRLS", "NOBYPASSRLS"})


@dataclass(frozen=True)
class Role:
    name: str
    attributes: str
    member_of: tuple[str, ...] = ()
    # The configuration variable holding its password (NAME or NAME_FILE); None: cannot log in.
    login_variable: str | None = None


ROLES = (
    # Owns the schema; nobody logs in as it (the migration job uses SET ROLE).
    Role(OWNER, f"NOLOGIN NOCREATEDB {_NOTHING_SPECIAL}"),
    # Reads and writes rows of the tables it uses (grants below); no DDL, no COPY ... PROGRAM, no files.
    Role(APP, f"LOGIN NOCREATEDB {_NOTHING_SPECIAL}", login_variable="DB_APP_PASSWORD"),
    # Dumps (pg_read_all_data); verify and restore create, fill, rename and drop databases (CREATEDB, the
    # owner's rights for what it restores, pg_signal_backend to end the app's sessions on the old one);
    # REPLICATION for pg_receivewal and pg_basebackup (point-in-time recovery, docs/backup-restore.md).
    Role(
        BACKUP,
        f"LOGIN CREATEDB REPLICATION {_NO_ADMIN}",
        member_of=("pg_read_all_data", "pg_signal_backend", OWNER),
        login_variable="DB_BACKUP_PASSWORD",
    ),
    # Statistics views only.
    Role(
        EXPORTER,
        f"LOGIN NOCREATEDB {_NOTHING_SPECIAL} CONNECTION LIMIT 5",
        member_of=("pg_monitor",),
        login_variable="DB_EXPORTER_PASSWORD",
    ),
)

PASSWORD_VARIABLES = tuple(role.login_variable for role in ROLES if role.login_variable)

# Objects of the schema the owner takes over (relkind: table, sequence, view, materialized view,
# partitioned table; ALTER TABLE works for all of them). Sequences owned by a column follow their table.
_FOREIGN_OBJECTS = """
    SELECT c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'm', 'p')
      AND pg_get_userbyid(c.relowner) <> %s
      AND NOT (c.relkind = 'S' AND EXISTS (
          SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
    ORDER BY 1
"""


def _cursor(connection: Connection) -> Any:
    """The DBAPI cursor inside the connection's current transaction: role statements take literals
    (a password verifier), which psycopg2's own SQL composition quotes safely.

    The transaction is begun here when need be, so that SQLAlchemy knows of it and the caller's rollback
    reaches the server after a failed statement."""
    if not connection.in_transaction():
        connection.begin()
    return connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def provision(connection: Connection, passwords: Mapping[str, str]) -> None:
    """As the bootstrap role: create/update every role, give the database, its public schema and every
    object in it to the owner role. ``passwords`` maps each role's password variable to the value.

    The bootstrap role is the superuser of our postgres service, or a managed server's CREATEROLE CREATEDB
    role that owns the database."""
    with _cursor(connection) as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        superuser = cursor.fetchone()[0]
        for role in ROLES:
            name = sql.Identifier(role.name)
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role.name,))
            verb = sql.SQL("ALTER" if cursor.fetchone() else "CREATE")
            words = role.attributes.split()
            attributes = " ".join(words if superuser else [word for word in words if word not in _SUPERUSER_ONLY])
            cursor.execute(sql.SQL("{} ROLE {} {}").format(verb, name, sql.SQL(attributes)))
            if role.login_variable:
                # Only a SCRAM verifier travels (and could reach the server log), never the password.
                verifier = encrypt_password(
                    passwords[role.login_variable], role.name, cursor.connection, "scram-sha-256"
                )
                cursor.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(name, sql.Literal(verifier)))
            for group in role.member_of:
                cursor.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), name))
        owner = sql.Identifier(OWNER)
        if not superuser:
            # Handing the database to the owner and SET ROLE to it take membership, which only a superuser
            # has without asking.
            cursor.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))
        cursor.execute("SELECT current_database()")
        database = sql.Identifier(cursor.fetchone()[0])
        cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(database, owner))
        cursor.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(owner))
        # Databases created before PostgreSQL 15 let every role create objects in public.
        cursor.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        cursor.execute(_FOREIGN_OBJECTS, (OWNER,))
        for (relation,) in cursor.fetchall():
            cursor.execute(sql.SQL("ALTER TABLE public.{} OWNER TO {}").format(sql.Identifier(relation), owner))


def grant_app(connection: Connection, tables: Iterable[str]) -> None:
    """After the migrations: the app may read, insert and update ``tables`` and read the schema revision.
    Anything granted before (e.g. on a table a migration since dropped from the models) is revoked."""
    app = sql.Identifier(APP)
    with _cursor(connection) as cursor:
        cursor.execute(sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(app))
        cursor.execute(sql.SQL("REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {}").format(app))
        cursor.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(app))
        for table in sorted(tables):
            cursor.execute(
                sql.SQL("GRANT SELECT, INSERT, UPDATE ON public.{} TO {}").format(sql.Identifier(table), app)
            )
        cursor.execute(sql.SQL("GRANT SELECT ON public.alembic_version TO {}").format(app))
