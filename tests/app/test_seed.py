"""The one seeder (bench, backup tests, backup/bench.sh): what it writes, the app counts as its own."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from app import seed
from app.models import COUNTER_SHARDS
from harness.flask_app import make_config, migrated_app
from tests.app.helpers import database_totals, total_on_page


@pytest.mark.parametrize("rebuild_key", [False, True], ids=["row-by-row", "key-rebuilt"])
def test_seeded_visitors_agree_with_the_counters_and_the_page(
    pg_database: str, rebuild_key: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rebuild_key:
        monkeypatch.setattr(seed, "REBUILD_KEY_FROM", 1)
    config = make_config(pg_database)
    app = migrated_app(config)
    seed.seed_visitors(config.database_url, 40)
    seed.seed_visitors(config.database_url, 25, offset=40)

    totals = database_totals(app)
    assert totals["visitors"] == totals["shard_visitors"] == 65
    assert totals["visits"] == totals["shard_visits"] > 65
    page = app.test_client().get("/", environ_base={"REMOTE_ADDR": "192.0.2.1"}).get_data(as_text=True)
    assert total_on_page(page) == 66
    with app.extensions["tally"].engine.connect() as connection:
        shards = connection.execute(text("SELECT count(*), max(shard) FROM total_shards")).one()
        daily = connection.execute(
            text("SELECT max(shard), sum(unique_visitors), sum(new_visitors) <= sum(unique_visitors) FROM daily_shards")
        ).one()
        keyed = connection.execute(
            text("SELECT count(*) FROM pg_constraint WHERE conrelid = 'visitors'::regclass AND contype = 'p'")
        ).scalar()
    assert tuple(shards) == (COUNTER_SHARDS, COUNTER_SHARDS - 1)
    assert daily[0] < COUNTER_SHARDS and daily[1] == 66 and daily[2]
    assert keyed == 1
