"""Alembic environment. Several replicas may run ``flask db upgrade`` at the same moment, so on
PostgreSQL the whole run holds a session advisory lock: the first migrates, the others wait and
then find the schema at head."""

from __future__ import annotations

import logging

from alembic import context
from flask import current_app
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from app.migrations_lock import MIGRATION_LOCK_ID
from app.models import Base

log = logging.getLogger("alembic.env")


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


def run_migrations_online() -> None:
    engine = current_app.extensions["migrate"].db.engine
    with engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            # The app's engine autocommits every statement (app/db.py); a migration needs transactions.
            connection.execution_options(isolation_level="READ COMMITTED")
            # The app's statement timeout suits requests, not a migration or a replica waiting its turn.
            connection.execute(text("SET statement_timeout = 0"))
            connection.execute(text("SET lock_timeout = 0"))
            connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        _forget_foreign_revision(connection)
        # Commit the autobegun transaction so Alembic's own transaction (and its COMMIT) starts clean.
        connection.commit()
        try:
            context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgres:
                connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID})
                connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
