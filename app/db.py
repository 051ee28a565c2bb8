"""Engine settings: fail fast when the database is away, recover by itself when it is back."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event

from .config import Config


def engine_options(config: Config) -> dict[str, Any]:
    if config.is_postgres:
        return {
            # A connection killed by a database restart is replaced before use, not failed on.
            "pool_pre_ping": True,
            "pool_size": config.db_pool_size,
            "max_overflow": config.db_max_overflow,
            "pool_timeout": config.db_pool_timeout,
            "pool_recycle": 1800,
            # Every request runs single statements, each its own transaction: no BEGIN/COMMIT round trips.
            # Set once per connection, so nothing has to be reset (and fail on a broken connection) at
            # check-in. Migrations ask for a transaction themselves (app/migrations/env.py).
            "isolation_level": "AUTOCOMMIT",
            "connect_args": {
                "connect_timeout": config.db_connect_timeout,
                "application_name": "tally",
                "options": f"-c statement_timeout={config.db_statement_timeout_ms}"
                f" -c lock_timeout={config.db_statement_timeout_ms}",
            },
        }
    return {"connect_args": {"timeout": config.db_statement_timeout_ms / 1000, "check_same_thread": False}}


def prepare_sqlite(engine: Engine) -> None:
    """Take SQLite's write lock at BEGIN so concurrent visits queue instead of failing to upgrade."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would delay BEGIN; we issue it ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
