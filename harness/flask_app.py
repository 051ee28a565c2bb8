"""The app in this process (no server): a production configuration, a migrated ``create_app``, and a watch
on the statements its engine sends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg2.extensions
from flask import Flask
from sqlalchemy import Engine, event

from app import create_app
from app.config import Config, load_config

from .gunicorn import TEST_SECRET_KEY


def make_config(database_url: str, **overrides: str) -> Config:
    environ = {"TALLY_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY} | overrides
    return load_config(environ)


def migrated_app(config: Config) -> Flask:
    from flask_migrate import upgrade

    app = create_app(config)
    with app.app_context():
        upgrade()
    return app


def watch_statements(
    engine: Engine,
    before: Callable[[Any], None] | None = None,
    after: Callable[[Any], None] | None = None,
) -> None:
    """Calls ``before``/``after`` with the driver connection around every statement sent on the engine's
    pooled connections. The visit runs on the driver's cursor itself (app/counting.py), below SQLAlchemy's
    cursor events, so this watches the cursors the driver hands out."""

    class WatchedCursor(psycopg2.extensions.cursor):
        def execute(self, query: Any, vars: Any = None) -> None:  # noqa: A002 - psycopg2's own name
            if before is not None:
                before(self.connection)
            super().execute(query, vars)
            if after is not None:
                after(self.connection)

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, *_args: Any) -> None:
        dbapi_connection.cursor_factory = WatchedCursor
