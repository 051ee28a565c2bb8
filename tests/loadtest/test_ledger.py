"""The ledger the drills judge time windows by (loadtest/ledger.py): what the Locust suite writes with
``--ledger``, read back. The suite writing it under load is exercised by tests/drills and tests/e2e."""

from __future__ import annotations

from loadtest.ledger import line, parse_ledger


def test_ledger_lines_cut_short_are_ignored() -> None:
    requests = parse_ledger("1.0 12.5 200 1 visit\n2.0 3.0 503 0 visit\n3.0 1.0 200 1 other\n4.0 2")
    assert [(r.status, r.ok, r.visit) for r in requests] == [(200, True, True), (503, False, True), (200, True, False)]


def test_only_get_of_the_page_is_a_visit_whatever_the_query_or_host() -> None:
    written = "".join(
        [
            line("GET", "https://localhost/?utm=x", 1.25, 12.0, 200, True),
            line("GET", "/", 2.0, 3.5, 503, False),
            line("GET", "", 3.0, 1.0, 0, False),
            line("GET", "/api/stats", 4.0, 1.0, 200, True),
            line("HEAD", "/", 5.0, 1.0, 200, True),
        ]
    )
    requests = parse_ledger(written)
    assert [(r.start, r.latency_ms, r.status, r.ok, r.visit) for r in requests] == [
        (1.25, 12.0, 200, True, True),
        (2.0, 3.5, 503, False, True),
        (3.0, 1.0, 0, False, True),
        (4.0, 1.0, 200, True, False),
        (5.0, 1.0, 200, True, False),
    ]
    assert requests[0].end == 1.262
