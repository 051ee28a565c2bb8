"""`make bench`'s arithmetic and its recorded results, without running a benchmark (that is `make bench`)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from bench.run import DEFAULT_OUTPUT, _integer, composite, summarise_rounds, table


def test_composite_is_the_harmonic_combination_of_both_ceilings() -> None:
    # 1 ms of framework + 0.5 ms of database per visit: 1.5 ms, i.e. 666.7 visits/s.
    assert composite(1000.0, 2000.0) == pytest.approx(666.67, abs=0.01)
    assert composite(0.0, 2000.0) == 0.0


def test_rounds_are_summarised_as_median_and_spread_of_per_round_ratios() -> None:
    rounds = [
        {"hello": {"rps": 1000.0}, "returning": {"rps": 400.0}, "new": {"rps": 300.0},
         "pgbench_returning": {"rps": 1000.0}, "pgbench_new": {"rps": 1000.0}},
        {"hello": {"rps": 500.0}, "returning": {"rps": 100.0}, "new": {"rps": 100.0},
         "pgbench_returning": {"rps": 500.0}, "pgbench_new": {"rps": 500.0}},
        {"hello": {"rps": 2000.0}, "returning": {"rps": 500.0}, "new": {"rps": 500.0},
         "pgbench_returning": {"rps": 2000.0}, "pgbench_new": {"rps": 2000.0}},
    ]  # fmt: skip
    summary = summarise_rounds(rounds)
    # Composites 500, 250, 1000: the ratio is taken within each round, then the median of the rounds.
    assert summary["returning_vs_composite"]["rounds"] == [0.8, 0.4, 0.5]
    assert summary["returning_vs_composite"]["median"] == 0.5
    assert summary["new_vs_composite"]["median"] == 0.5
    assert summary["hello_rps"]["spread_pct"] == 150.0


def test_the_floor_is_summarised_against_the_new_visitors_composite() -> None:
    rounds = [
        {"hello": {"rps": 2000.0}, "floor": {"rps": 800.0}, "returning": {"rps": 300.0}, "new": {"rps": 400.0},
         "pgbench_returning": {"rps": 6000.0}, "pgbench_new": {"rps": 2000.0}},
    ]  # fmt: skip
    summary = summarise_rounds(rounds)
    # Composite with pgbench new: 1000 req/s, whatever pgbench returning did.
    assert summary["floor_vs_composite"]["median"] == 0.8
    assert summary["floor_vs_hello"]["median"] == 0.4
    assert summary["new_vs_floor"]["median"] == 0.5
    assert "| floor / composite | 0.80 |" in table(
        {"sizes": {"1000": {"summary": summary}}, "targets": [], "config": {"duration_s": 10}}
    ).replace("| 1,000 ", "")


def test_recorded_results_match_their_rounds() -> None:
    """bench/results/latest.json is what docs/capacity.md quotes: its ratios must follow from its rounds."""
    report = json.loads(DEFAULT_OUTPUT.read_text())
    for size, data in report["sizes"].items():
        recomputed = summarise_rounds(data["rounds"])
        for key in ("new_vs_composite", "returning_vs_composite"):
            assert recomputed[key]["median"] == data["summary"][key]["median"], (size, key)
    rendered = table(report)
    assert "new / composite" in rendered
    assert "returning / composite" in rendered


def test_postgres_integers() -> None:
    assert _integer(Decimal(12)) == 12
    assert _integer(7) == 7
    with pytest.raises(TypeError):
        _integer("7")
