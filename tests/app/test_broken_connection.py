"""A connection that breaks at any point of a visit is a 503 (nothing stored) or an acknowledged visit.

Each test kills the server process behind the visit's own connection (pg_terminate_backend from a
second connection, waiting until it is gone) at one point of the visit, chosen with a pool event or
around the driver's statement, and checks the answer against what the database holds.
"""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event

from app.counting import VISIT_STATEMENT_NAME
from harness.flask_app import make_config, migrated_app, watch_statements
from harness.postgres import ExternalPostgres, PostgresServer
from tests.app.helpers import database_totals, visits_on_page

ADDRESS = "192.0.2.10"

# point -> (event target, event name, status of the visit during which the connection breaks)
POINTS = {
    # After the pool handed the connection out (and after any liveness check): the statement fails.
    "checkout": ("pool", "checkout", 503),
    "statement": ("statement", "before", 503),
    # The statement committed and its row came back: the visit is stored, so it must be acknowledged.
    "after_commit": ("statement", "after", 200),
    "check_in": ("pool", "reset", 200),
}


class Killer:
    """Terminates the backend of the connection that fires the armed event, once."""

    def __init__(self, server: PostgresServer | ExternalPostgres) -> None:
        self.server = server
        self.armed = False
        self.killed: list[int] = []

    def __call__(self, *args: Any) -> None:
        if not self.armed:
            return
        self.armed = False
        pid = _backend_pid(args[0])
        # The two-argument form waits (up to 5 s) until the process has exited.
        assert self.server.execute(f"SELECT pg_terminate_backend({pid}, 5000)") == [(True,)]
        self.killed.append(pid)


def _backend_pid(connection: Any) -> int:
    """The server pid behind a driver connection or a pool's proxy of one (psycopg2 and 3)."""
    dbapi = getattr(connection, "connection", connection)
    dbapi = getattr(dbapi, "dbapi_connection", dbapi)
    pid: int = dbapi.info.backend_pid
    return pid


@pytest.fixture
def app(pg_database: str) -> Flask:
    return migrated_app(make_config(pg_database))


def visit(app: Flask) -> tuple[int, str]:
    response = app.test_client().get("/", environ_base={"REMOTE_ADDR": ADDRESS})
    return response.status_code, response.get_data(as_text=True)


@pytest.mark.parametrize("point", POINTS)
def test_connection_broken_during_a_visit(app: Flask, pg_server: PostgresServer | ExternalPostgres, point: str) -> None:
    target_name, event_name, expected = POINTS[point]
    engine = app.extensions["tally"].engine
    killer = Killer(pg_server)
    if target_name == "pool":
        event.listen(engine.pool, event_name, killer)
    else:
        watch_statements(engine, **{event_name: killer})
    assert visit(app)[0] == 200  # the pool holds a live connection now

    killer.armed = True
    status, body = visit(app)
    assert killer.killed, f"the {event_name} event never fired"
    assert status == expected, body[:300]
    if status == 503:
        assert "Temporarily unavailable" in body
    stored = 2 if expected == 200 else 1
    assert database_totals(app)["visits"] == stored

    # The next visit works on a fresh connection and counts from what is stored.
    status, body = visit(app)
    assert status == 200, body[:300]
    assert visits_on_page(body) == stored + 1


def test_connection_that_died_idle_in_the_pool_is_replaced(
    app: Flask, pg_server: PostgresServer | ExternalPostgres
) -> None:
    """A database restart kills every pooled connection: the next visit must not fail on one of them."""
    engine = app.extensions["tally"].engine
    killer = Killer(pg_server)
    event.listen(engine.pool, "checkin", killer)
    killer.armed = True
    assert visit(app)[0] == 200
    assert killer.killed
    status, body = visit(app)
    assert status == 200, body[:300]
    assert visits_on_page(body) == 2


def test_replacement_closed_at_once_is_a_503(app: Flask, pg_server: PostgresServer | ExternalPostgres) -> None:
    """During a restart the connection that replaces a dead pooled one can die too: a 503, not the pool's
    'reconnect attempts exhausted' error (a 500)."""
    engine = app.extensions["tally"].engine
    idle_killer, new_killer = Killer(pg_server), Killer(pg_server)
    event.listen(engine.pool, "checkin", idle_killer)
    event.listen(engine.pool, "connect", new_killer)
    idle_killer.armed = True
    assert visit(app)[0] == 200  # its connection then dies idle in the pool
    new_killer.armed = True
    status, body = visit(app)
    assert new_killer.killed
    assert status == 503, body[:300]
    assert database_totals(app)["visits"] == 1
    assert visit(app)[0] == 200


def test_exhausted_pool_is_a_503(pg_database: str) -> None:
    app = migrated_app(make_config(pg_database, DB_POOL_SIZE="1", DB_MAX_OVERFLOW="0", DB_POOL_TIMEOUT="0.1"))
    with app.extensions["tally"].engine.connect():  # holds the only connection
        status, body = visit(app)
    assert status == 503, body[:300]
    assert visit(app)[0] == 200


@pytest.mark.parametrize("lost", ["deallocated", "already_prepared"])
def test_visit_survives_a_session_it_does_not_own(app: Flask, lost: str) -> None:
    """Behind a pooler in transaction mode (PgBouncer) the server session changes under the app: the
    prepared visit statement is missing, or already there. The visit runs in full instead, counted once."""
    engine = app.extensions["tally"].engine
    assert visit(app)[0] == 200  # prepares the statement on the pooled connection
    with engine.connect() as connection:
        if lost == "deallocated":
            connection.exec_driver_sql(f"DEALLOCATE {VISIT_STATEMENT_NAME}")
        else:
            del connection.connection.info[VISIT_STATEMENT_NAME]
    for expected in (2, 3):
        status, body = visit(app)
        assert status == 200, body[:300]
        assert visits_on_page(body) == expected
    assert database_totals(app)["visits"] == 3


def test_connection_closed_on_the_client_side_is_a_503(app: Flask) -> None:
    """psycopg2 reports a connection it closed itself as an InterfaceError, not an OperationalError: the
    visit, run on the driver connection, must still answer 503 and leave no dead connection in the pool."""
    engine = app.extensions["tally"].engine
    assert visit(app)[0] == 200
    closed: list[int] = []

    def close_once(dbapi_connection: Any, *_args: Any) -> None:
        if not closed:
            closed.append(1)
            dbapi_connection.close()

    event.listen(engine.pool, "checkout", close_once)
    status, body = visit(app)
    assert closed
    assert status == 503, body[:300]
    assert "Temporarily unavailable" in body
    status, body = visit(app)
    assert status == 200, body[:300]
    assert visits_on_page(body) == 2
