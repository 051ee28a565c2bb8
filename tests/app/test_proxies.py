"""X-Forwarded-For counts only from the proxy network (TRUSTED_PROXY_CIDRS), never from another peer."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import ConfigError
from harness.flask_app import make_config, migrated_app
from tests.app.helpers import visits_on_page

PROXY_NETWORK = "172.31.240.0/24"


def test_forwarded_for_is_trusted_only_from_the_proxy_network(tmp_path: Path) -> None:
    config = make_config(
        f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_HOPS="1", TRUSTED_PROXY_CIDRS=PROXY_NETWORK
    )
    client = migrated_app(config).test_client()

    def visit(peer: str, forwarded: str) -> int:
        response = client.get("/", environ_base={"REMOTE_ADDR": peer}, headers={"X-Forwarded-For": forwarded})
        assert response.status_code == 200
        return visits_on_page(response.get_data(as_text=True))

    assert visit("172.31.240.2", "203.0.113.9") == 1  # Traefik speaks for the visitor
    # Another container that reaches the port names the same visitor: it is counted as itself.
    assert visit("10.20.0.7", "203.0.113.9") == 1
    assert visit("10.20.0.7", "198.51.100.1") == 2
    assert visit("::ffff:172.31.240.2", "203.0.113.9") == 2


def test_invalid_proxy_network_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TRUSTED_PROXY_CIDRS: 'traefik' is not an IP network"):
        make_config(f"sqlite:///{tmp_path / 't.sqlite3'}", TRUSTED_PROXY_CIDRS="172.31.240.0/24, traefik")
