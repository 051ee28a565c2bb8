"""Take this replica out of Traefik's rotation before it is stopped; scripts/deploy.sh runs it inside the
replica it is about to replace:

    python -m app.drain --metrics-url http://traefik:8082/metrics --timeout 15 \
        [--after-up 172.31.240.7 ...] 172.31.240.5 [...]

With --after-up (the replica that takes over), it first waits until Traefik reports that one up: Traefik
rebuilds its load balancer, health checks included, whenever a container becomes healthy, and a drain
confirmed before that rebuild would be undone by it (a new balancer counts every server up until its
first check). Then it creates DRAIN_MARKER, so /readyz answers 503 while every other request is still served, then polls
Traefik's own metrics until Traefik reports the replica's server down (``traefik_service_server_up`` 0
for its addresses, after its next health check). Stopping the replica only then means no request can be
sent to a listener that gunicorn has already closed.

Exit 0: Traefik took it out. 3: this image has no DRAIN_MARKER (nothing done). 4: not confirmed within the
timeout (the replica stays drained; the caller decides whether to stop it anyway).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable

from prometheus_client.parser import text_string_to_metric_families

from .config import load_config_or_exit

SERVER_UP = "traefik_service_server_up"
POLL_INTERVAL_S = 0.25


def server_states(metrics_text: str, addresses: Iterable[str]) -> list[float]:
    """The server_up values Traefik reports for servers at any of ``addresses`` (one per service)."""
    hosts = set(addresses)
    values: list[float] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name != SERVER_UP:
            continue
        for sample in family.samples:
            # url="http://172.31.240.5:8000": the host between the scheme and the port.
            host = sample.labels.get("url", "").split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
            if host in hosts:
                values.append(float(sample.value))
    return values


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - the operator's Traefik URL
        body: bytes = response.read()
    return body.decode("utf-8", "replace")


def _poll(
    metrics_url: str, addresses: list[str], timeout_s: float, done: Callable[[list[float], bool], bool]
) -> str | None:
    """None once ``done(states, seen_before)`` holds for Traefik's view of ``addresses``, else why not."""
    deadline = time.monotonic() + timeout_s
    seen = False
    last = "no answer yet"
    while True:
        try:
            states = server_states(fetch(metrics_url), addresses)
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: unparsable metrics
            last = f"cannot read {metrics_url}: {exc}"
        else:
            if done(states, seen):
                return None
            seen = seen or bool(states)
            last = f"{SERVER_UP} for {', '.join(addresses)}: {states or 'not listed'}"
        if time.monotonic() >= deadline:
            return last
        time.sleep(POLL_INTERVAL_S)


def wait_out_of_rotation(metrics_url: str, addresses: list[str], timeout_s: float) -> str | None:
    """None once Traefik no longer routes to ``addresses``, else why not (at the deadline)."""
    # Reported down, or no longer listed after it was (Traefik dropped the server from its config).
    return _poll(
        metrics_url,
        addresses,
        timeout_s,
        lambda states, seen: (seen or bool(states)) and not any(v >= 1 for v in states),
    )


def wait_in_rotation(metrics_url: str, addresses: list[str], timeout_s: float) -> str | None:
    """None once Traefik reports one of ``addresses`` up (checked, in its current balancer)."""
    return _poll(metrics_url, addresses, timeout_s, lambda states, _seen: any(v >= 1 for v in states))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.drain", description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-url", required=True, help="Traefik's Prometheus metrics URL")
    parser.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for Traefik (15)")
    parser.add_argument(
        "--after-up", action="append", default=[], help="first wait until Traefik reports this address up (repeatable)"
    )
    parser.add_argument("addresses", nargs="+", help="this replica's IP addresses on its networks")
    args = parser.parse_args(argv)
    drain_marker = load_config_or_exit().drain_marker
    if drain_marker is None:
        print("drain: DRAIN_MARKER is not set in this replica; it cannot be drained", file=sys.stderr)
        return 3
    started = time.monotonic()
    # Not confirmed: drain anyway (better than none), and say so.
    unconfirmed = args.after_up and wait_in_rotation(args.metrics_url, args.after_up, args.timeout)
    drain_marker.touch()
    problem = wait_out_of_rotation(args.metrics_url, args.addresses, args.timeout)
    if problem is not None:
        print(f"drain: Traefik did not report the replica down within {args.timeout:g}s ({problem})", file=sys.stderr)
        return 4
    if unconfirmed:
        print(f"drain: Traefik never reported {', '.join(args.after_up)} up ({unconfirmed})", file=sys.stderr)
        return 4
    print(f"drain: out of Traefik's rotation after {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
