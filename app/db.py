"""Engine settings: fail fast when the database is away, recover by itself when it is back."""

from __future__ import annotations

import select
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidatePoolError

from .config import Config

# A database that vanished without closing its connections (host or container gone, network cut) would
# leave a query waiting forever: the statement timeout is enforced by the server that is gone. Keepalives
# find a dead peer of an idle or waiting connection in ~8 s, tcp_user_timeout one that stopped acknowledging
# what we sent. (A server that is alive but frozen still acknowledges: Traefik's response timeout and the
# worker watchdog bound that case, docs/reliability.md "Hung dependencies".)
DEAD_PEER_DETECTION = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 1,
    "keepalives_count": 3,
    "tcp_user_timeout": 8000,
}


def engine_options(config: Config) -> dict[str, Any]:
    if config.is_postgres:
        return {
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
                **DEAD_PEER_DETECTION,
                "application_name": "tally",
                "options": f"-c statement_timeout={config.db_statement_timeout_ms}"
                f" -c lock_timeout={config.db_statement_timeout_ms}",
            },
        }
    return {"connect_args": {"timeout": config.db_statement_timeout_ms / 1000, "check_same_thread": False}}


_FRESH = "tally_fresh"


def replace_closed_connections(engine: Engine) -> None:
    """A connection the server closed while it sat in the pool (a restart, a terminated backend) is
    replaced at checkout instead of failing the request.

    This does what ``pool_pre_ping`` does without its round trip (which cost more than the visit
    statement's own client work, docs/capacity.md): an idle connection has nothing to read, so a
    readable socket means the server sent its goodbye (an error message) or closed it.
    """

    @event.listens_for(engine.pool, "connect")
    def _connect(_dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        # As pre-ping does, trust a connection made for this checkout: one the server closes right away
        # fails the statement (a 503), rather than exhausting the pool's reconnect attempts (a 500).
        if record.info.pop(_FRESH, False):
            return
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        if poller.poll(0):
            # SQLAlchemy reconnects this one and every connection older than it.
            raise InvalidatePoolError("the server closed this pooled connection")


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
