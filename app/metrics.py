"""Prometheus metrics. Under gunicorn every worker writes to PROMETHEUS_MULTIPROC_DIR and the
master serves the merged view on METRICS_PORT (see gunicorn.conf.py), so Traefik never routes
``/metrics``. Each app gets its own registry so tests can build many apps in one process."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flask import Flask, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics
from sqlalchemy import Engine, event

from .buildinfo import BuildInfo
from .config import Config
from .proxies import RefusalLog, only_from_scrapers

DB_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
DB_OPERATIONS = ("visit", "stats", "ready")
REQUEST_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def path(request: Request) -> str:
    """Route template as the ``path`` label: raw paths would let any client mint new series."""
    return request.url_rule.rule if request.url_rule is not None else "<unmatched>"


UNTRUSTED_PEER = "untrusted_peer"


def refused_counter(registry: CollectorRegistry | None) -> Counter:
    # In the workers on the app's registry, in gunicorn's master (the metrics listener) on none: under
    # gunicorn both write to PROMETHEUS_MULTIPROC_DIR, whose collector merges them into one series per label set.
    return Counter(
        "tally_requests_refused",
        "Requests refused with 403 before the app: a peer outside the listener's allowed networks",
        ["listener", "reason"],
        registry=registry,
    )


@dataclass(frozen=True)
class Refusals:
    """Counts and logs (rate-limited, app/proxies.py) every peer a listener refuses."""

    counter: Counter
    log: RefusalLog = field(default_factory=RefusalLog)

    def __call__(self, listener: str, peer: str, path: str) -> None:
        self.counter.labels(listener=listener, reason=UNTRUSTED_PEER).inc()
        self.log(listener, peer, path)


@dataclass(frozen=True)
class AppMetrics:
    registry: CollectorRegistry
    visits: Counter
    new_visitors: Counter
    db_query_duration: Histogram
    db_errors: Counter
    pool_checked_out: Gauge
    pool_size: Gauge
    db_durations: dict[str, Histogram]
    refusals: Refusals

    @contextmanager
    def db_operation(self, operation: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except Exception:
            self.db_errors.labels(operation=operation).inc()
            raise
        finally:
            # labels() hashes and locks on every call: the visit path reuses the children made at start.
            self.db_durations[operation].observe(time.perf_counter() - started)

    def watch_pool(self, engine: Engine, pool_size: int) -> None:
        self.pool_size.set(pool_size)

        @event.listens_for(engine, "checkout")
        def _checkout(*_args: Any) -> None:
            self.pool_checked_out.inc()

        @event.listens_for(engine, "checkin")
        def _checkin(*_args: Any) -> None:
            self.pool_checked_out.dec()


def init_metrics(app: Flask, config: Config, build: BuildInfo) -> AppMetrics:
    registry = CollectorRegistry()
    exporter_options: dict[str, Any] = {
        "registry": registry,
        "group_by": path,
        "buckets": REQUEST_LATENCY_BUCKETS,
        "excluded_paths": ["^/static/"],
    }
    exporter: PrometheusMetrics
    if config.prometheus_multiproc_dir:
        # gunicorn's on_starting creates it; one-shot commands (flask db upgrade) share the setting.
        Path(config.prometheus_multiproc_dir).mkdir(parents=True, exist_ok=True)
        exporter = GunicornPrometheusMetrics(app, **exporter_options)
    else:
        exporter = PrometheusMetrics(app, path=None, **exporter_options)
    exporter.info(
        "tally_app_info",
        "Running Tally build",
        version=build.version,
        build=build.build or "",
        commit=build.commit or "",
    )
    db_query_duration = Histogram(
        "tally_db_query_duration_seconds",
        "Database work per request",
        ["operation"],
        buckets=DB_LATENCY_BUCKETS,
        registry=registry,
    )
    metrics = AppMetrics(
        registry=registry,
        visits=Counter("tally_visits_total", "Visits counted on /", registry=registry),
        new_visitors=Counter("tally_new_visitors_total", "Visitors seen for the first time", registry=registry),
        db_query_duration=db_query_duration,
        db_errors=Counter("tally_db_errors_total", "Database errors per operation", ["operation"], registry=registry),
        pool_checked_out=Gauge(
            "tally_db_pool_checked_out", "Database connections in use", registry=registry, multiprocess_mode="livesum"
        ),
        pool_size=Gauge(
            "tally_db_pool_size", "Configured database pool size", registry=registry, multiprocess_mode="livesum"
        ),
        # Series that exist from the start at 0: rate() cannot see the first error of a series born with it.
        db_durations={operation: db_query_duration.labels(operation=operation) for operation in DB_OPERATIONS},
        refusals=Refusals(refused_counter(registry)),
    )
    metrics.refusals.counter.labels(listener="app", reason=UNTRUSTED_PEER)
    for operation in DB_OPERATIONS:
        metrics.db_errors.labels(operation=operation)
    return metrics


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Every scrape would be a line on stderr; refusals are logged by Refusals."""


def start_metrics_server(config: Config) -> WSGIServer:
    """Every worker's metrics, merged, on METRICS_PORT from gunicorn's master (a daemon thread), served only
    to METRICS_ALLOWED_CIDRS and loopback when that is set."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    app = make_wsgi_app(registry)
    if config.metrics_allowed_networks:
        refusals = Refusals(refused_counter(None))
        refusals.counter.labels(listener="metrics", reason=UNTRUSTED_PEER)
        app = only_from_scrapers(app, config.metrics_allowed_networks, refusals)

    class MetricsServer(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in config.bind_address else socket.AF_INET

    server: WSGIServer = make_server(config.bind_address, config.metrics_port, app, MetricsServer, _QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-server", daemon=True).start()
    return server
