"""Which peers a listener serves: behind a reverse proxy, only the proxy (and the container's own loopback);
on the metrics port, only Prometheus. Every refusal is logged (rate-limited) and counted."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

REFUSED = b"403 Forbidden: this port serves the reverse proxy only (TRUSTED_PROXY_CIDRS).\n"
METRICS_REFUSED = b"403 Forbidden: this port serves Prometheus only (METRICS_ALLOWED_CIDRS).\n"
# One warning per peer and listener at most this often; the counter sees every refusal.
LOG_INTERVAL_S = 60.0
# Peers remembered for the rate limit; a flood of addresses (a spoofing peer) only resets it.
LOG_MAX_PEERS = 1024
log = logging.getLogger(__name__)


def _peer(remote_addr: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address((remote_addr or "").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


class RefusalLog:
    """A warning with the peer's address for the first refusal of each peer on a listener, then at most one
    per ``interval_s`` carrying how many were refused meanwhile: an intruder is seen without a flood of lines.
    The peers are containers of the stack, never visitors (those reach the app through the proxy)."""

    def __init__(self, interval_s: float = LOG_INTERVAL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def __call__(self, listener: str, peer: str, path: str) -> None:
        key, now = (listener, peer), self.clock()
        with self._lock:
            last, suppressed = self._last.get(key, (None, 0))
            if last is not None and now - last < self.interval_s:
                self._last[key] = (last, suppressed + 1)
                return
            if len(self._last) >= LOG_MAX_PEERS:
                self._last.clear()
            self._last[key] = (now, 0)
        log.warning(
            "refused a peer outside the allowed networks",
            extra={"listener": listener, "peer": peer, "path": path, "refused_since_last_line": suppressed},
        )


class OnlyFrom:
    """Answers 403 to every peer outside ``networks`` but loopback, before the wrapped app sees the request.

    Loopback peers are served with their ``X-Forwarded-*`` headers dropped: nothing inside the container
    speaks for a visitor. ``on_refused(listener, peer, path)`` hears of every refusal."""

    def __init__(
        self,
        app: WSGIApplication,
        networks: Iterable[Network],
        *,
        listener: str,
        body: bytes,
        on_refused: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.app = app
        self.networks = tuple(networks)
        self.listener = listener
        self.body = body
        self.on_refused = on_refused

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        peer = _peer(environ.get("REMOTE_ADDR"))
        if peer is not None and any(peer in network for network in self.networks):
            return self.app(environ, start_response)
        if peer is None or not peer.is_loopback:
            if self.on_refused is not None:
                self.on_refused(
                    self.listener, str(environ.get("REMOTE_ADDR", ""))[:64], environ.get("PATH_INFO", "")[:200]
                )
            start_response(
                "403 Forbidden",
                [
                    ("Content-Type", "text/plain; charset=utf-8"),
                    ("Content-Length", str(len(self.body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [self.body]
        for key in [key for key in environ if key.startswith("HTTP_X_FORWARDED_")]:
            del environ[key]
        return self.app(environ, start_response)


def only_from_proxies(
    app: WSGIApplication, networks: Iterable[Network], on_refused: Callable[[str, str, str], None] | None = None
) -> OnlyFrom:
    """The app's port behind Traefik: only the proxy network and loopback.

    The only legitimate callers are the proxy and the container itself (its health check, scripts/deploy.sh's
    readiness probe). Any other container that can open the port — PostgreSQL shares a network with the
    replicas — could otherwise send requests that count as visits, and werkzeug's ``ProxyFix`` would let it
    name any client address."""
    return OnlyFrom(app, networks, listener="app", body=REFUSED, on_refused=on_refused)


def only_from_scrapers(
    app: WSGIApplication, networks: Iterable[Network], on_refused: Callable[[str, str, str], None] | None = None
) -> OnlyFrom:
    """The metrics port: only Prometheus's network and loopback (Traefik shares a network with the replicas)."""
    return OnlyFrom(app, networks, listener="metrics", body=METRICS_REFUSED, on_refused=on_refused)
