"""HTTP endpoints. Only ``GET /`` counts a visit."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from .chart import bar_chart
from .counting import VisitResult, read_stats, record_visit
from .identity import BadClientAddress, normalise_address, visitor_key
from .page import render_visit_page
from .state import tally

log = logging.getLogger(__name__)
bp = Blueprint("tally", __name__)
# The statistics page is the same for everyone and holds no personal data: browsers and any shared cache may
# reuse it for a minute, which bounds the reads a crowd of reloads costs; a minute-old chart is still true.
STATS_PAGE_CACHE_CONTROL = "public, max-age=60"

# Uptime checkers that poll "/" although they should use /healthz; their polls are not visits.
PROBE_USER_AGENT_PREFIXES = (
    "kube-probe/",
    "Blackbox Exporter/",
    "GoogleHC/",
    "ELB-HealthChecker/",
    "Amazon-Route53-Health-Check-Service",
    "Consul Health Check",
    "UptimeRobot/",
)
# Not "Traefik": its load-balancer health check polls /readyz and sends Go's default User-Agent, so the
# prefix matched only clients naming themselves "Traefik…", whose visits would silently not count.


def _page(visit: VisitResult | None) -> Response:
    html = render_visit_page(None) if visit is None else tally().visit_page.render(visit)
    return Response(html, mimetype="text/html")


@bp.get("/")
def index() -> Response:
    if request.method == "HEAD":
        return Response(mimetype="text/html")
    user_agent = request.headers.get("User-Agent", "")
    if user_agent.startswith(PROBE_USER_AGENT_PREFIXES):
        return _page(None)
    address = normalise_address(request.remote_addr)
    if address is None:
        raise BadClientAddress()
    state = tally()
    with state.metrics.db_operation("visit"):
        visit = record_visit(state.engine, visitor_key(state.config.secret_key, address))
    state.metrics.visits.inc()
    if visit.is_new_visitor:
        state.metrics.new_visitors.inc()
    return _page(visit)


@bp.get("/version")
def version() -> Response:
    return jsonify(tally().build.as_dict())


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = tally()
    drain_marker = state.config.drain_marker
    if drain_marker is not None and drain_marker.exists():
        # Out of rotation on purpose (scripts/deploy.sh is about to stop this replica); it still serves.
        return jsonify(status="draining"), 503
    with state.metrics.db_operation("ready"), state.engine.connect() as connection:
        try:
            revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except ProgrammingError:  # no alembic_version table: never migrated
            revision = None
    # Only a schema *behind* this build is unready. A revision we do not know is newer: during a rolling
    # deploy the migration runs first and the old replicas must keep serving until they are replaced.
    if revision is None or (revision != state.head_revision and revision in state.known_revisions):
        log.warning("schema not at head", extra={"revision": revision, "head": state.head_revision})
        return jsonify(status="migrations pending", revision=revision, head=state.head_revision), 503
    return jsonify(status="ready", revision=revision), 200


@bp.get("/api/stats")
def stats() -> Response:
    state = tally()
    with state.metrics.db_operation("stats"):
        result = read_stats(state.engine)
    body: dict[str, Any] = {
        "total_visitors": result.total_visitors,
        "total_visits": result.total_visits,
        "daily": [{"day": d.day.isoformat(), "unique_visitors": d.unique_visitors} for d in result.daily],
    }
    return jsonify(body)


@bp.get("/stats")
def stats_page() -> Response:
    """Totals and the last 30 days as a server-rendered SVG chart; reading it is not a visit."""
    state = tally()
    with state.metrics.db_operation("stats"):
        result = read_stats(state.engine)
    html = render_template(
        "stats.html",
        stats=result,
        chart=bar_chart([(d.day, d.unique_visitors) for d in result.daily]),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Cache-Control"] = STATS_PAGE_CACHE_CONTROL
    return response
