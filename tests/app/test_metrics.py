"""Metrics are correct across gunicorn workers and never served on the public port."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from harness.gunicorn import base_env, migrate, run_gunicorn
from tests.app.helpers import released_version


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return sum(v for (n, lbls), v in metrics.items() if n == name and set(labels.items()) <= lbls)


def test_in_process_metrics_count_visits_and_errors(client: FlaskClient) -> None:
    from prometheus_client import generate_latest

    registry = client.application.extensions["tally"].metrics.registry
    client.get("/", environ_base={"REMOTE_ADDR": "1.1.1.1"})
    client.get("/", environ_base={"REMOTE_ADDR": "1.1.1.1"})
    client.get("/does-not-exist")
    metrics = samples(generate_latest(registry).decode())
    assert value(metrics, "tally_visits_total") == 2
    assert value(metrics, "tally_new_visitors_total") == 1
    assert value(metrics, "tally_db_query_duration_seconds_count", operation="visit") == 2
    assert value(metrics, "flask_http_request_duration_seconds_count", path="/", status="200") == 2
    assert value(metrics, "flask_http_request_duration_seconds_count", path="<unmatched>", status="404") == 1
    assert value(metrics, "tally_app_info", version=released_version()) == 1
    assert ("tally_db_errors_total", frozenset({("operation", "stats")})) in metrics


@pytest.mark.slow
def test_multiprocess_metrics_under_gunicorn(pg_database: str, tmp_path: Path) -> None:
    assert migrate(pg_database, tmp_path).returncode == 0
    # Loopback is always served: the listener's allow-list (tests/app/test_proxies.py) lets this test in.
    env = base_env(pg_database, tmp_path, WEB_CONCURRENCY="3", BUILD_NUMBER="9", METRICS_ALLOWED_CIDRS="10.9.0.0/24")
    server = run_gunicorn(env, tmp_path / "gunicorn.log")
    try:
        session = requests.Session()
        # Connection: close spreads the requests over the workers.
        close = {"Connection": "close"}
        codes = [session.get(server.url + "/", headers=close, timeout=5).status_code for _ in range(30)]
        assert codes == [200] * 30
        assert requests.get(server.url + "/metrics", timeout=5).status_code == 404
        metrics = samples(requests.get(server.metrics_url, timeout=5).text)
        assert value(metrics, "tally_visits_total") == 30
        assert value(metrics, "tally_new_visitors_total") == 1
        assert value(metrics, "flask_http_request_duration_seconds_count", path="/", status="200") == 30
        assert value(metrics, "tally_db_pool_size") == 12  # 3 live workers x DB_POOL_SIZE 4
        assert value(metrics, "tally_db_pool_checked_out") == 0
        assert value(metrics, "tally_app_info", version=f"{released_version()}+build.9") >= 1
        # Both listeners' refusal series, the master's merged with the workers', exist from the start.
        for listener in ("app", "metrics"):
            assert value(metrics, "tally_requests_refused_total", listener=listener, reason="untrusted_peer") == 0
    finally:
        server.stop()
