"""Fixtures for the app tests that need a PostgreSQL server of their own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.postgres import PostgresServer


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of its own: the test stops or freezes it, which would break the shared one."""
    server = PostgresServer.create(max_connections=50)
    try:
        yield server
    finally:
        server.destroy()
