"""A visit costs at most two round trips to PostgreSQL: the pool's liveness ping and one statement."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import event

from harness.flask_app import make_config, migrated_app, watch_statements


def test_visit_round_trips(pg_database: str) -> None:
    app = migrated_app(make_config(pg_database))
    client: FlaskClient = app.test_client()
    engine = app.extensions["tally"].engine
    client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"})  # warm the pool

    statements: list[str] = []
    pings: list[int] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(_conn: Any, _cursor: Any, sql: str, *_args: Any) -> None:
        statements.append(sql)

    # The visit itself runs on the driver's cursor, below SQLAlchemy's cursor events.
    watch_statements(engine, before=lambda _connection: statements.append("driver statement"))

    # pool_pre_ping checks each connection out with a ping that bypasses cursor events.
    @event.listens_for(engine.pool, "checkout")
    def _checkout(*_args: Any) -> None:
        pings.append(1)

    for address in ("192.0.2.1", "192.0.2.2"):  # a returning and a new visitor
        statements.clear()
        pings.clear()
        assert client.get("/", environ_base={"REMOTE_ADDR": address}).status_code == 200
        assert len(statements) == 1, statements
        assert len(statements) + len(pings) <= 2
