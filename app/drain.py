"""Take this replica out of Traefik's rotation before it is stopped; scripts/deploy.sh runs it inside the
replica it is about to replace:

    <Traefik's metrics, one snapshot after another> | \
    python -m app.drain --metrics-url - --timeout 15 [--after-up 172.31.240.7 ...] 172.31.240.5 [...]

The replica does not reach Traefik's metrics port (only Prometheus and Traefik's own loopback do,
traefik/dynamic/metrics.yml), so deploy.sh reads them inside Traefik's container and pipes them in: with
``--metrics-url -`` each snapshot on stdin ends with a ``# EOF`` line. A URL is read directly instead
(the native drills, where Traefik runs on the same loopback).

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
import queue
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from typing import IO

from prometheus_client.parser import text_string_to_metric_families

from .config import load_config_or_exit

SERVER_UP = "traefik_service_server_up"
# Ends each snapshot on stdin (OpenMetrics' terminator; a comment to the text format Traefik writes).
SNAPSHOT_END = "# EOF"
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


class FeedEnded(OSError):
    """Nothing more will come: waiting longer cannot help."""


class StdinFeed:
    """The newest of the metrics snapshots written to ``stream``, each ended by a ``SNAPSHOT_END`` line. A
    thread reads them, so a stalled writer costs at most ``wait_s`` per poll, never the drain's deadline."""

    def __init__(self, stream: IO[str], wait_s: float = 2.0) -> None:
        self.wait_s = wait_s
        self.snapshots: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        lines: list[str] = []
        for line in stream:
            if line.rstrip("\n") == SNAPSHOT_END:
                self.snapshots.put("".join(lines))
                lines = []
            else:
                lines.append(line)
        self.snapshots.put(None)

    def __call__(self) -> str:
        try:
            newest = self.snapshots.get(timeout=self.wait_s)
        except queue.Empty:
            raise OSError(f"no snapshot on stdin within {self.wait_s:g}s") from None
        while newest is not None and not self.snapshots.empty():
            newer = self.snapshots.get_nowait()
            if newer is None:
                self.snapshots.put(None)  # the end, for the next call
                break
            newest = newer
        if newest is None:
            self.snapshots.put(None)  # and for every later call
            raise FeedEnded("the feed on stdin ended")
        return newest


Metrics = str | Callable[[], str]


def _poll(
    metrics: Metrics, addresses: list[str], timeout_s: float, done: Callable[[list[float], bool], bool]
) -> str | None:
    """None once ``done(states, seen_before)`` holds for Traefik's view of ``addresses``, else why not.
    ``metrics``: Traefik's metrics URL, or what returns the newest snapshot."""
    if isinstance(metrics, str):
        url, name = metrics, metrics

        def read() -> str:
            return fetch(url)
    else:
        read, name = metrics, "Traefik's metrics"
    deadline = time.monotonic() + timeout_s
    seen = False
    last = "no answer yet"
    while True:
        try:
            states = server_states(read(), addresses)
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: unparsable metrics
            last = f"cannot read {name}: {exc}"
            if isinstance(exc, FeedEnded):
                return last
        else:
            if done(states, seen):
                return None
            seen = seen or bool(states)
            last = f"{SERVER_UP} for {', '.join(addresses)}: {states or 'not listed'}"
        if time.monotonic() >= deadline:
            return last
        time.sleep(POLL_INTERVAL_S)


def wait_out_of_rotation(metrics_url: Metrics, addresses: list[str], timeout_s: float) -> str | None:
    """None once Traefik no longer routes to ``addresses``, else why not (at the deadline)."""
    # Reported down, or no longer listed after it was (Traefik dropped the server from its config).
    return _poll(
        metrics_url,
        addresses,
        timeout_s,
        lambda states, seen: (seen or bool(states)) and not any(v >= 1 for v in states),
    )


def wait_in_rotation(metrics_url: Metrics, addresses: list[str], timeout_s: float) -> str | None:
    """None once Traefik reports one of ``addresses`` up (checked, in its current balancer)."""
    return _poll(metrics_url, addresses, timeout_s, lambda states, _seen: any(v >= 1 for v in states))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.drain", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--metrics-url",
        required=True,
        help=f"Traefik's Prometheus metrics URL, or - (snapshots on stdin, each ended by {SNAPSHOT_END!r})",
    )
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
    metrics: Metrics = StdinFeed(sys.stdin) if args.metrics_url == "-" else args.metrics_url
    started = time.monotonic()
    # Not confirmed: drain anyway (better than none), and say so.
    unconfirmed = args.after_up and wait_in_rotation(metrics, args.after_up, args.timeout)
    drain_marker.touch()
    problem = wait_out_of_rotation(metrics, args.addresses, args.timeout)
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
