"""Alembic environment. Several replicas may run ``flask db upgrade`` at the same moment, so on
PostgreSQL the whole run holds a session advisory lock: the first migrates, the others wait and
then find the schema at head.

Every schema change waits at most ``MIGRATION_LOCK_TIMEOUT_MS`` for a table lock, then rolls back,
backs off and tries again (``MIGRATION_LOCK_ATTEMPTS`` in all): a migration queued behind a long
reader (the nightly dump) would otherwise hold up every visit queued behind it.

With the role passwords configured (``DB_*_PASSWORD``, the migration job only), the run also
provisions the least-privilege roles and migrates as the schema owner (``app.roles``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from alembic import context
from flask import current_app
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from app import roles
from app.config import Config
from app.migrations_lock import MIGRATION_LOCK_ID
from app.models import Base

log = logging.getLogger("alembic.env")
LOCK_NOT_AVAILABLE = "55P03"
MAX_BACKOFF_SECONDS = 15.0


def _forget_foreign_revision(connection: Connection) -> None:
    """The original app kept its own Alembic history; its revision ids mean nothing to ours.

    When that legacy ``visitor`` table is present and ``alembic_version`` names a revision we do
    not know, start our history from scratch so the baseline can import the legacy rows."""
    inspector = inspect(connection)
    if not (inspector.has_table("visitor") and inspector.has_table("alembic_version")):
        return
    known = {script.revision for script in context.script.walk_revisions()}
    stored = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    if stored and not set(stored) <= known:
        log.warning("clearing unknown legacy revision(s) %s before importing the legacy visitor table", stored)
        connection.execute(text("DELETE FROM alembic_version"))


def _lock_not_available(exc: Exception) -> bool:
    # The role steps use the driver's cursor, whose errors arrive unwrapped.
    driver_error = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(driver_error, "pgcode", None) == LOCK_NOT_AVAILABLE


def _with_lock_retries(connection: Connection, config: Config, step: str, work: Callable[[], None]) -> None:
    """Run ``work`` in one transaction; when it gave up waiting for a lock, roll back and try again."""
    attempts = config.migration_lock_attempts
    for attempt in range(1, attempts + 1):
        try:
            work()
            connection.commit()
            return
        except Exception as exc:
            # Roll back before anything else touches the connection, or the cleanup fails on the aborted
            # transaction and hides this error.
            connection.rollback()
            if not _lock_not_available(exc):
                raise
            if attempt == attempts:
                raise SystemExit(
                    f"migrations: {step}: no lock within {config.migration_lock_timeout_ms} ms in {attempts} "
                    "attempts; a long transaction holds the table (pg_stat_activity shows it); nothing was "
                    "changed, run the migrations again later"
                ) from None
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (attempt - 1))
            log.warning(
                "migrations: %s: lock not available within %d ms (attempt %d of %d); retrying in %.1f s",
                step,
                config.migration_lock_timeout_ms,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)


def _migrate(connection: Connection, config: Config) -> None:
    _forget_foreign_revision(connection)
    # What a revision needs of the app's configuration is handed to it here, never imported by it.
    context.config.attributes["secret_key"] = config.secret_key
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
    # The connection is already in this step's transaction: Alembic joins it, _with_lock_retries commits.
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    config: Config = current_app.extensions["tally"].config
    engine = current_app.extensions["migrate"].db.engine
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        provision = postgres and bool(config.db_role_passwords)
        if postgres:
            # The app's engine autocommits every statement (app/db.py); a migration needs transactions.
            connection.execution_options(isolation_level="READ COMMITTED")
            # The app's statement timeout suits requests, not a migration or a replica waiting its turn;
            # the advisory lock is waited for without limit, table locks only briefly.
            connection.execute(text("SET statement_timeout = 0"))
            connection.execute(text("SET lock_timeout = 0"))
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            connection.execute(text(f"SET lock_timeout = {int(config.migration_lock_timeout_ms)}"))
        # Commit the autobegun transaction so each step's transaction (and its COMMIT) starts clean.
        connection.commit()
        try:
            if provision:
                _with_lock_retries(
                    connection, config, "roles", lambda: roles.provision(connection, config.db_role_passwords)
                )
                connection.execute(text(f"SET ROLE {roles.OWNER}"))
                connection.commit()
            _with_lock_retries(connection, config, "schema", lambda: _migrate(connection, config))
            if provision:
                _with_lock_retries(
                    connection, config, "grants", lambda: roles.grant_app(connection, Base.metadata.tables)
                )
        finally:
            if postgres:
                connection.rollback()
                connection.execute(text("RESET ROLE"))
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
