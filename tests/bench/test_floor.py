"""bench/floor.py does a visit's database work, or the benchmark's floor would measure less than a visit."""

from __future__ import annotations

import pytest
from sqlalchemy import make_url

from harness.flask_app import make_config, migrated_app
from harness.postgres import ExternalPostgres, PostgresServer


def test_floor_counts_visits_with_the_apps_statement(
    pg_server: PostgresServer | ExternalPostgres, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrated_app(make_config(pg_database))  # the schema the statement writes to
    database = str(make_url(pg_database).database)
    monkeypatch.setenv("BENCH_FLOOR_DSN", pg_server.dsn(database))
    from bench.floor import app as floor

    client = floor.test_client()

    def visit(address: str) -> str:
        response = client.get("/", headers={"X-Forwarded-For": address})
        assert response.status_code == 200
        return response.text

    # "visits of this visitor, visitors in total, visitors today": the statement ran and committed each time.
    assert visit("203.0.113.7") == "1 1 1"
    assert visit("203.0.113.7") == "2 1 1"
    assert visit("203.0.113.8") == "1 2 2"
    stored = pg_server.execute("SELECT count(*), sum(visits) FROM visitors", database)
    assert [tuple(map(int, row)) for row in stored] == [(2, 3)]
