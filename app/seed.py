"""Synthetic visitors, written as the app's visits would leave them: one row per visitor and the
total and daily counter shards that agree with those rows (over the app's ``COUNTER_SHARDS``).

For benchmarks, backup tests and drills, never for a live database. PostgreSQL only (set-based SQL, so a
million visitors take seconds); the schema comes from the migrations.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/tally TALLY_ENV=development \\
        python -m app.seed VISITORS [--offset N]
"""

from __future__ import annotations

import argparse

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

from .config import load_config_or_exit
from .models import COUNTER_SHARDS

# Above this many rows at once, rebuilding the primary key once beats inserting into it row by row.
REBUILD_KEY_FROM = 100_000

# Visitor i: a distinct key, 1-13 visits, its latest visit on one of the 28 days before today (UTC), so
# today's counts start at zero and /stats has a month to draw; one-visit visitors are new that day. Its
# shard is a byte of its key: the app picks one at random per visit, either spreads rows evenly.
_SEED = """
WITH seeded AS (
    INSERT INTO visitors (visitor_key, visits, first_seen, last_seen, last_day, prev_day)
    SELECT key, visits,
           (CASE WHEN visits = 1 THEN day ELSE day - 30 END)::timestamp AT TIME ZONE 'UTC',
           day::timestamp AT TIME ZONE 'UTC' + interval '12 hours',
           day, CASE WHEN visits > 1 THEN day - 1 END
    FROM (
        SELECT sha256(convert_to('seed-' || i, 'UTF8')) AS key, 1 + (i * 7919) % 13 AS visits,
               (now() AT TIME ZONE 'UTC')::date - 1 - (i % 28)::int AS day
        FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
    ) AS v
    RETURNING visitor_key, visits, last_day, get_byte(visitor_key, 0) % :shards AS shard
), totals AS (
    INSERT INTO total_shards AS t (shard, visits, visitors)
    SELECT shard, sum(visits), count(*) FROM seeded GROUP BY shard
    ON CONFLICT (shard) DO UPDATE SET visits = t.visits + excluded.visits, visitors = t.visitors + excluded.visitors
)
INSERT INTO daily_shards AS d (day, shard, visits, unique_visitors, new_visitors)
SELECT last_day, shard, count(*), count(*), count(*) FILTER (WHERE visits = 1) FROM seeded GROUP BY last_day, shard
ON CONFLICT (day, shard) DO UPDATE SET visits = d.visits + excluded.visits,
    unique_visitors = d.unique_visitors + excluded.unique_visitors,
    new_visitors = d.new_visitors + excluded.new_visitors
"""


def seed_visitors(database_url: str | URL, visitors: int, offset: int = 0) -> None:
    """Add visitors ``offset+1 .. offset+visitors`` (the same numbers give the same keys) in one transaction."""
    if visitors <= 0:
        return
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            rebuild = visitors >= REBUILD_KEY_FROM
            if rebuild:
                connection.execute(text("SET LOCAL maintenance_work_mem = '1GB'"))
                pkey = connection.execute(
                    text("SELECT conname FROM pg_constraint WHERE conrelid = 'visitors'::regclass AND contype = 'p'")
                ).scalar_one()
                connection.execute(text(f'ALTER TABLE visitors DROP CONSTRAINT "{pkey}"'))
            connection.execute(text(_SEED), {"first": offset + 1, "last": offset + visitors, "shards": COUNTER_SHARDS})
            if rebuild:
                connection.execute(text(f'ALTER TABLE visitors ADD CONSTRAINT "{pkey}" PRIMARY KEY (visitor_key)'))
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app.seed", description="Add synthetic visitors.")
    parser.add_argument("visitors", type=int)
    parser.add_argument("--offset", type=int, default=0, help="visitors already seeded (default 0)")
    args = parser.parse_args()
    seed_visitors(load_config_or_exit().database_url, args.visitors, args.offset)


if __name__ == "__main__":
    main()
