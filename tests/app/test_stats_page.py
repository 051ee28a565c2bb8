"""/stats: the totals and the last 30 days as a server-rendered SVG bar chart with honest axes."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.chart import bar_chart, nice_ticks
from app.counting import STATS_DAYS, record_visit, utc_today
from app.identity import visitor_key
from tests.app.helpers import database_totals

SVG = "{http://www.w3.org/2000/svg}"
# Unique visitors on each of these days back from today (0 = today); 40 is outside the 30-day window.
SEEDED = {0: 3, 1: 1, 2: 7, 5: 2, 29: 4, 40: 9}


def chart_of(html: str) -> ET.Element:
    match = re.search(r'<svg class="chart".*?</svg>', html, re.S)
    assert match, "no chart on the page"
    return ET.fromstring(match.group(0))  # noqa: S314 - the page under test, rendered by our own app


def seed(app: Flask) -> None:
    state = app.extensions["tally"]
    today = utc_today()
    for days_ago, visitors in SEEDED.items():
        for number in range(visitors):
            key = visitor_key(state.config.secret_key, f"198.51.100.{days_ago * 10 + number}")
            record_visit(state.engine, key, today - dt.timedelta(days=days_ago))


def test_bars_follow_the_data_on_a_zero_baseline(client: FlaskClient, app: Flask) -> None:
    seed(app)
    before = database_totals(app)
    response = client.get("/stats", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert re.search(r'id="total-visitors">26<', html)
    assert re.search(r'id="total-visits">26<', html)

    svg = chart_of(html)
    bars = svg.findall(f"{SVG}rect")
    assert len(bars) == STATS_DAYS
    today = utc_today()
    expected = {(today - dt.timedelta(days=n)).isoformat(): v for n, v in SEEDED.items() if n < STATS_DAYS}
    values = {bar.get("data-day"): int(bar.get("data-value") or -1) for bar in bars}
    assert values == {day: expected.get(day, 0) for day in values}
    assert list(values) == sorted(values), "oldest day first"

    baseline = float(next(line for line in svg.findall(f"{SVG}line") if line.get("class") == "axis").get("y1") or 0)
    heights = {bar.get("data-day"): float(bar.get("height") or 0) for bar in bars}
    for bar in bars:
        assert float(bar.get("y") or 0) + float(bar.get("height") or 0) == pytest.approx(baseline, abs=0.02)
    tallest = max(expected, key=lambda day: expected[day])
    unit = heights[tallest] / expected[tallest]
    assert unit > 0
    for day, value in values.items():
        assert heights[day] == pytest.approx(value * unit, abs=0.02), day

    ticks = [t for t in svg.findall(f"{SVG}text") if t.get("class") == "tick"]
    tick_values = [int(t.get("data-value") or -1) for t in ticks]
    assert tick_values[0] == 0 and tick_values[-1] >= max(expected.values())
    for tick, value in zip(ticks, tick_values, strict=True):
        assert tick.text == f"{value:,}"
        assert float(tick.get("y") or 0) == pytest.approx(baseline - value * unit, abs=0.02)
    # Reading the statistics is not a visit.
    assert database_totals(app) == before


def test_stats_page_has_its_own_cache_policy_and_no_script(client: FlaskClient) -> None:
    response = client.get("/stats")
    assert response.headers["Cache-Control"] == "public, max-age=60"
    html = response.get_data(as_text=True)
    assert "<script" not in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert 'viewBox="0 0 ' in html


def test_an_empty_site_draws_an_empty_chart_with_a_labelled_axis(client: FlaskClient, app: Flask) -> None:
    svg = chart_of(client.get("/stats").get_data(as_text=True))
    assert {float(bar.get("height") or -1) for bar in svg.findall(f"{SVG}rect")} == {0.0}
    assert [t.text for t in svg.findall(f"{SVG}text") if t.get("class") == "tick"] == ["0", "1"]
    assert client.head("/stats").status_code == 200
    assert database_totals(app)["visits"] == 0


def test_the_page_links_to_the_statistics(client: FlaskClient) -> None:
    html = client.get("/", environ_base={"REMOTE_ADDR": "203.0.113.7"}).get_data(as_text=True)
    footer = html.split("<footer", 1)[1]
    assert 'href="/stats"' in footer


@pytest.mark.parametrize(
    ("maximum", "ticks"),
    [
        (0, (0, 1)),
        (1, (0, 1)),
        (3, (0, 1, 2, 3)),
        (7, (0, 2, 4, 6, 8)),
        (10, (0, 5, 10)),
        (23, (0, 10, 20, 30)),
        (999, (0, 500, 1000)),
        (1001, (0, 500, 1000, 1500)),
        (1_000_000, (0, 500_000, 1_000_000)),
    ],
)
def test_ticks_are_round_numbers_from_zero_past_the_maximum(maximum: int, ticks: tuple[int, ...]) -> None:
    assert nice_ticks(maximum) == ticks


def test_long_tick_labels_widen_the_left_margin() -> None:
    day = dt.date(2026, 11, 30)
    narrow = bar_chart([(day, 4)])
    wide = bar_chart([(day, 4_000_000)])
    assert wide.left > narrow.left
    assert wide.bars[0].height == narrow.bars[0].height == narrow.baseline - narrow.top
    assert [label.text for label in bar_chart([(day, 1)]).day_labels] == ["Nov 30"]
