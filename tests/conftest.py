"""Shared fixtures: a real PostgreSQL 15 for the session, and the app on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from harness.flask_app import make_config, migrated_app
from harness.postgres import ExternalPostgres, PostgresServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer | ExternalPostgres]:
    """PostgreSQL 15 for the session: started here, or GitLab's service when TEST_DATABASE_URL names one."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield ExternalPostgres(external)
        return
    server = PostgresServer.create()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_database(pg_server: PostgresServer | ExternalPostgres) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = pg_server.create_database(name)
    yield url
    pg_server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests run on both supported databases."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tally.sqlite3'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def app(database_url: str) -> Flask:
    return migrated_app(make_config(database_url))


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("SENTRY_", "FLASK_DEBUG")):
            monkeypatch.delenv(name)
