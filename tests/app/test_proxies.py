"""Behind the proxy the app serves only the proxy network (TRUSTED_PROXY_CIDRS) and its own loopback."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError
from harness.flask_app import make_config, migrated_app
from tests.app.helpers import database_totals, visits_on_page

PROXY_NETWORK = "172.16.240.0/24"


def test_only_the_proxy_network_and_loopback_are_served(tmp_path: Path) -> None:
    config = make_config(
        f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_HOPS="1", TRUSTED_PROXY_CIDRS=PROXY_NETWORK
    )
    app = migrated_app(config)
    client = app.test_client()

    def visit(peer: str, forwarded: str = "203.0.113.9", path: str = "/") -> tuple[int, str]:
        response = client.get(path, environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded})
        return response.status_code, response.get_data(as_text=True)

    status, page = visit("172.16.240.2")  # Traefik speaks for the visitor
    assert status == 200 and visits_on_page(page) == 1
    status, page = visit("::ffff:172.16.240.2")
    assert status == 200 and visits_on_page(page) == 2
    before = database_totals(app)
    # Another container that reaches the port (PostgreSQL over db-app): refused, whatever it asks, and
    # nothing is counted, not even as itself.
    for peer in ("172.20.0.3", "10.20.0.7", "fe80::1%eth0", "", "not-an-address"):
        for path in ("/", "/api/stats", "/readyz", "/nope"):
            status, body = visit(peer, path=path)
            assert status == 403, (peer, path)
            assert "reverse proxy only (TRUSTED_PROXY_CIDRS)" in body
    assert database_totals(app) == before
    # The container's own health check and the deploy's readiness probe come over loopback: served, but
    # nothing inside the container speaks for a visitor (its X-Forwarded-For is dropped).
    assert visit("127.0.0.1", path="/healthz")[0] == 200
    assert visit("::1", path="/readyz")[0] == 200
    status, page = visit("127.0.0.1", forwarded="203.0.113.9")
    assert status == 200 and visits_on_page(page) == 1  # counted as 127.0.0.1, a new visitor


def test_every_peer_is_served_without_a_proxy_network(tmp_path: Path) -> None:
    """Outside compose (development, a bare gunicorn) nothing is refused."""
    client = migrated_app(make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_HOPS="1")).test_client()
    response = client.get("/", environ_base={"REMOTE_ADDR": "10.20.0.7"}, headers={"X-Forwarded-For": "203.0.113.9"})
    assert response.status_code == 200


def test_invalid_proxy_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXY_CIDRS: 'traefik' is not an IP network"):
        make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_CIDRS="172.16.240.0/24, traefik")
