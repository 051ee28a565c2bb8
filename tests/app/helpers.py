"""Reading the page and the counters the way a visitor and an operator would."""

from __future__ import annotations

import re

from flask import Flask
from sqlalchemy import text

from app.buildinfo import VERSION_FILE

VISIT_LINE = re.compile(r"You have visited this page <span class=\"visit-figure\">(\d+)</span> times?\.")
TOTAL_TILE = re.compile(r'id="total-visitors">(\d+)</span>Total visitors<')


def released_version() -> str:
    """The version this checkout ships, read where the app reads it: bumping it must not break a test."""
    return VERSION_FILE.read_text(encoding="utf-8").strip()


def visits_on_page(html: str) -> int:
    match = VISIT_LINE.search(html)
    assert match, f"no visit line in page: {html[:500]}"
    return int(match.group(1))


def total_on_page(html: str) -> int:
    match = TOTAL_TILE.search(html)
    assert match, "no total visitors tile in page"
    return int(match.group(1))


def database_totals(app: Flask) -> dict[str, int]:
    """Counts from the visitor rows themselves and from the counter shards; they must agree."""
    with app.extensions["tally"].engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT (SELECT count(*) FROM visitors), (SELECT coalesce(sum(visits), 0) FROM visitors),"
                " (SELECT coalesce(sum(visitors), 0) FROM total_shards),"
                " (SELECT coalesce(sum(visits), 0) FROM total_shards)"
            )
        ).one()
    return {"visitors": row[0], "visits": row[1], "shard_visitors": row[2], "shard_visits": row[3]}
