"""No lost updates, no first-visit race: the defects the original app showed under load."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask

from app.counting import record_visit
from harness.gunicorn import base_env, migrate, run_gunicorn
from tests.app.helpers import database_totals, visits_on_page

VISITS = 200


def test_concurrent_first_visits_of_one_visitor_in_process(app: Flask) -> None:
    engine = app.extensions["tally"].engine
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda _: record_visit(engine, b"same-visitor".ljust(32, b".")), range(VISITS)))
    assert sorted(result.visits for result in results) == list(range(1, VISITS + 1))
    assert sum(result.is_new_visitor for result in results) == 1
    assert database_totals(app) == {"visitors": 1, "visits": VISITS, "shard_visitors": 1, "shard_visits": VISITS}


def test_concurrent_distinct_visitors_in_process(app: Flask) -> None:
    engine = app.extensions["tally"].engine
    keys = [f"visitor-{n}".encode().ljust(32, b".") for n in range(VISITS)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda key: record_visit(engine, key), keys + keys))
    assert sum(result.is_new_visitor for result in results) == VISITS
    assert max(result.total_visitors for result in results) == VISITS
    assert database_totals(app) == {
        "visitors": VISITS,
        "visits": 2 * VISITS,
        "shard_visitors": VISITS,
        "shard_visits": 2 * VISITS,
    }


@pytest.mark.slow
def test_through_real_gunicorn(pg_database: str, tmp_path: Path) -> None:
    """Hundreds of concurrent requests through the production server config: every one is a 200 and counted."""
    assert migrate(pg_database, tmp_path).returncode == 0
    server = run_gunicorn(base_env(pg_database, tmp_path, TRUSTED_PROXY_HOPS="1"), tmp_path / "gunicorn.log")
    try:
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

        def hit(address: str) -> requests.Response:
            return session.get(server.url + "/", headers={"X-Forwarded-For": address}, timeout=30)

        with ThreadPoolExecutor(max_workers=32) as pool:
            same = list(pool.map(hit, ["198.51.100.1"] * 300))
            distinct = list(pool.map(hit, [f"10.1.{n // 250}.{n % 250}" for n in range(300)]))
        assert [r.status_code for r in same + distinct] == [200] * 600
        assert sorted(visits_on_page(r.text) for r in same) == list(range(1, 301))
        stats = session.get(server.url + "/api/stats", timeout=10).json()
        assert stats == stats | {"total_visitors": 301, "total_visits": 600}
    finally:
        server.stop()
