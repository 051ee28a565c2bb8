"""Which peers may speak for the client: ``X-Forwarded-*`` counts only from a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForwardedOnlyFromProxies:
    """Drops every ``X-Forwarded-*`` header of a request whose TCP peer is outside ``networks``.

    Wraps werkzeug's ``ProxyFix``, which trusts a number of hops from whoever connects: any container
    that can reach the app's port could otherwise name any client address and mint visitors."""

    def __init__(self, app: WSGIApplication, networks: Iterable[Network]) -> None:
        self.app = app
        self.networks = tuple(networks)

    def _trusted(self, peer: str | None) -> bool:
        try:
            address = ipaddress.ip_address((peer or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        if not self._trusted(environ.get("REMOTE_ADDR")):
            for key in [key for key in environ if key.startswith("HTTP_X_FORWARDED_")]:
                del environ[key]
        return self.app(environ, start_response)
