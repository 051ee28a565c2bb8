"""Which peers the app serves: behind a reverse proxy, only the proxy (and the container's own loopback)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED = b"403 Forbidden: this port serves the reverse proxy only (TRUSTED_PROXY_CIDRS).\n"


def _peer(remote_addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class OnlyFromProxies:
    """Answers 403 to every peer outside ``networks`` but loopback, before anything is counted.

    Behind Traefik the only legitimate callers of the app's port are the proxy and the container itself
    (its health check, scripts/deploy.sh's readiness probe). Any other container that can open the port —
    PostgreSQL shares a network with the replicas — could otherwise send requests that count as visits, and
    werkzeug's ``ProxyFix`` would let it name any client address. Loopback peers are served with their
    ``X-Forwarded-*`` headers dropped: nothing inside the container speaks for a visitor."""

    def __init__(self, app: WSGIApplication, networks: Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        peer = _peer(environ.get("REMOTE_ADDR"))
        if peer is not None and any(peer in network for network in self.networks):
            return self.app(environ, start_response)
        if peer is None or not peer.is_loopback:
            start_response(
                "403 Forbidden",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(REFUSED))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [REFUSED]
        for key in [key for key in environ if key.startswith("HTTP_X_FORWARDED_")]:
            del environ[key]
        return self.app(environ, start_response)
