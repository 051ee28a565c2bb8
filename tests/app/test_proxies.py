"""Behind the proxy the app serves only the proxy network (TRUSTED_PROXY_CIDRS) and its own loopback; the
metrics port only Prometheus's network (METRICS_ALLOWED_CIDRS). Every refusal is counted and logged."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, make_wsgi_app
from werkzeug.test import Client

from app.config import ConfigError
from app.metrics import Refusals, refused_counter
from app.proxies import METRICS_REFUSED, RefusalLog, only_from_scrapers
from app.state import EXTENSION_NAME
from harness.flask_app import make_config, migrated_app
from tests.app.helpers import database_totals, visits_on_page

PROXY_NETWORK = "172.16.240.0/24"
SCRAPE_NETWORK = "172.16.242.0/24"


def refused(registry: CollectorRegistry, listener: str) -> float | None:
    return registry.get_sample_value("tally_requests_refused_total", {"listener": listener, "reason": "untrusted_peer"})


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def refusal_lines() -> Iterator[list[logging.LogRecord]]:
    """The refusal warnings (create_app replaces the root logger's handlers, so caplog would miss them)."""
    handler = Lines()
    logger = logging.getLogger("app.proxies")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_only_the_proxy_network_and_loopback_are_served(tmp_path: Path, refusal_lines: list[logging.LogRecord]) -> None:
    config = make_config(
        f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_HOPS="1", TRUSTED_PROXY_CIDRS=PROXY_NETWORK
    )
    app = migrated_app(config)
    registry = app.extensions[EXTENSION_NAME].metrics.registry
    client = app.test_client()

    def visit(peer: str, forwarded: str = "203.0.113.9", path: str = "/") -> tuple[int, str]:
        response = client.get(path, environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded})
        return response.status_code, response.get_data(as_text=True)

    status, page = visit("172.16.240.2")  # Traefik speaks for the visitor
    assert status == 200 and visits_on_page(page) == 1
    status, page = visit("::ffff:172.16.240.2")
    assert status == 200 and visits_on_page(page) == 2
    before = database_totals(app)
    # The series exists before the first refusal (an alert's rate() sees the first one).
    assert refused(registry, "app") == 0
    # Another container that reaches the port (PostgreSQL over db-app): refused, whatever it asks, and
    # nothing is counted as a visit, not even as itself; every refusal is counted in the metric.
    peers = ("172.20.0.3", "10.20.0.7", "fe80::1%eth0", "", "not-an-address")
    paths = ("/", "/api/stats", "/readyz", "/nope")
    for peer in peers:
        for path in paths:
            status, body = visit(peer, path=path)
            assert status == 403, (peer, path)
            assert "reverse proxy only (TRUSTED_PROXY_CIDRS)" in body
    assert database_totals(app) == before
    assert refused(registry, "app") == len(peers) * len(paths)
    # ... and logged with the peer's address: once per peer, not once per request.
    lines = refusal_lines
    assert [(r.__dict__["listener"], r.__dict__["peer"]) for r in lines] == [("app", peer) for peer in peers]
    assert lines[0].__dict__["path"] == "/"
    # The container's own health check and the deploy's readiness probe come over loopback: served, but
    # nothing inside the container speaks for a visitor (its X-Forwarded-For is dropped).
    assert visit("127.0.0.1", path="/healthz")[0] == 200
    assert visit("::1", path="/readyz")[0] == 200
    status, page = visit("127.0.0.1", forwarded="203.0.113.9")
    assert status == 200 and visits_on_page(page) == 1  # counted as 127.0.0.1, a new visitor
    assert refused(registry, "app") == len(peers) * len(paths)


def test_a_refused_peer_is_logged_again_after_the_interval_with_what_was_refused_meanwhile(
    refusal_lines: list[logging.LogRecord],
) -> None:
    now = [1000.0]
    log = RefusalLog(interval_s=60, clock=lambda: now[0])
    for _ in range(5):
        log("app", "172.20.0.3", "/")
    log("metrics", "172.20.0.3", "/metrics")  # another listener: its own line
    now[0] += 59
    log("app", "172.20.0.3", "/")
    assert [r.__dict__["refused_since_last_line"] for r in refusal_lines] == [0, 0]
    now[0] += 1
    log("app", "172.20.0.3", "/")
    lines = refusal_lines
    assert len(lines) == 3
    assert (lines[2].__dict__["listener"], lines[2].__dict__["refused_since_last_line"]) == ("app", 5)


def test_the_metrics_port_serves_only_the_scrape_network_and_loopback(refusal_lines: list[logging.LogRecord]) -> None:
    registry = CollectorRegistry()
    refusals = Refusals(refused_counter(registry))
    exposed = make_wsgi_app(registry)
    client = Client(only_from_scrapers(exposed, [ipaddress.ip_network(SCRAPE_NETWORK)], refusals))

    def scrape(peer: str) -> tuple[int, bytes]:
        response = client.get("/metrics", environ_base={"REMOTE_ADDR": peer})
        return response.status_code, response.get_data()

    # Prometheus, and the container itself (tests, an operator's docker exec).
    for peer in ("172.16.242.7", "127.0.0.1", "::1"):
        status, body = scrape(peer)
        assert status == 200 and b"tally_requests_refused_total" in body, peer
    # Traefik, which shares the `app` network with the replicas: refused, counted, logged.
    status, body = scrape("172.16.240.2")
    assert (status, body) == (403, METRICS_REFUSED)
    assert refused(registry, "metrics") == 1
    assert [(r.__dict__["listener"], r.__dict__["peer"]) for r in refusal_lines] == [("metrics", "172.16.240.2")]


def test_every_peer_is_served_without_a_proxy_network(tmp_path: Path) -> None:
    """Outside compose (development, a bare gunicorn) nothing is refused."""
    client = migrated_app(make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_HOPS="1")).test_client()
    response = client.get("/", environ_base={"REMOTE_ADDR": "10.20.0.7"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200


@pytest.mark.parametrize("name", ["TRUSTED_PROXY_CIDRS", "METRICS_ALLOWED_CIDRS"])
def test_invalid_network_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: 'traefik' is not an IP network"):
        make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", **{name: "172.16.240.0/24, traefik"})
