"""Tally: counts visitors without storing who they are."""

from __future__ import annotations

import logging
from pathlib import Path

from alembic.script import ScriptDirectory
from flask import Flask, Response, abort, g, request
from flask_migrate import Migrate
from werkzeug.middleware.proxy_fix import ProxyFix

from .buildinfo import VersionFileError, load_build_info
from .config import Config, load_config_or_exit
from .db import engine_options, prepare_sqlite, replace_closed_connections
from .errors import register_error_handlers
from .logs import REQUEST_ID_HEADER, assign_request_id, configure_logging
from .metrics import init_metrics
from .models import db
from .page import VisitPage
from .proxies import only_from_proxies
from .state import Tally
from .views import bp

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Visits are GETs; nothing legitimate sends a body, so refuse anything sizeable before reading it.
MAX_REQUEST_BODY_BYTES = 16 * 1024
BODYLESS_METHODS = frozenset({"GET", "HEAD"})
log = logging.getLogger(__name__)


def create_app(config: Config | None = None) -> Flask:
    config = config or load_config_or_exit()
    configure_logging(config.log_level)
    try:
        build = load_build_info(config)
    except VersionFileError as exc:
        raise SystemExit(f"tally: {exc}") from None

    app = Flask(__name__)
    if app.debug:
        raise SystemExit("tally: refusing to start with the Flask debugger enabled (unset FLASK_DEBUG)")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=config.database_url,
        SQLALCHEMY_ENGINE_OPTIONS=engine_options(config),
        MAX_CONTENT_LENGTH=MAX_REQUEST_BODY_BYTES,
    )
    if config.trusted_proxy_hops:
        hops = config.trusted_proxy_hops
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    if config.database_is_default:
        Path(config.database_url.database or "").parent.mkdir(parents=True, exist_ok=True)
        log.warning(
            "DATABASE_URL is not set: using SQLite for local development", extra={"path": config.database_url.database}
        )

    db.init_app(app)
    Migrate(app, db, directory=str(MIGRATIONS_DIR))
    with app.app_context():
        engine = db.engine
    if config.is_postgres:
        replace_closed_connections(engine)
    else:
        prepare_sqlite(engine)
    metrics = init_metrics(app, config, build)
    metrics.watch_pool(engine, config.db_pool_size if config.is_postgres else 0)
    if config.trusted_proxy_networks:
        # Outermost: a refused peer never reaches ProxyFix, the request metrics or a view.
        app.wsgi_app = only_from_proxies(  # type: ignore[method-assign]
            app.wsgi_app, config.trusted_proxy_networks, metrics.refusals
        )
    scripts = ScriptDirectory(str(MIGRATIONS_DIR))
    head = scripts.get_current_head()
    assert head is not None, "the migrations directory has no revision"
    known = frozenset(script.revision for script in scripts.walk_revisions())
    state = Tally(
        config=config,
        build=build,
        metrics=metrics,
        engine=engine,
        head_revision=head,
        known_revisions=known,
        visit_page=VisitPage(),
    )
    state.install(app)

    if config.sentry_dsn:
        _init_sentry(config, build.version)

    app.before_request(assign_request_id)

    @app.before_request
    def _refuse_large_bodies() -> None:
        # Checked before routing errors so an oversized upload is refused whatever its path or method.
        if (request.content_length or 0) > MAX_REQUEST_BODY_BYTES:
            abort(413)
        # A GET or HEAD that announces a body is refused before it can count: the view never reads the body,
        # so a malformed one (a bad chunk size) would otherwise be counted and then fail in the proxy, which
        # is still sending it (a 5xx for a visit that was recorded).
        if request.method in BODYLESS_METHODS and (request.content_length or "Transfer-Encoding" in request.headers):
            abort(400, "A GET or HEAD request carries no body.")

    @app.after_request
    def _tag_response(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        # Pages and answers are per visitor and per moment; a view that may be shared says so itself.
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.context_processor
    def _page_context() -> dict[str, object]:
        # What every page shows in its header and footer, from the one state object.
        return {"build": build, "user_name": config.user_name, "user_url": config.user_url}

    app.register_blueprint(bp)
    register_error_handlers(app, engine.dialect.loaded_dbapi.OperationalError)
    log.info("tally started", extra={"version": build.version, "database": config.database_url.get_backend_name()})
    return app


def _init_sentry(config: Config, release: str) -> None:
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(
        dsn=config.sentry_dsn,
        release=release,
        environment=config.sentry_environment,
        traces_sample_rate=config.sentry_traces_sample_rate,
        integrations=[FlaskIntegration()],
        # Frame locals could hold the visitor's address; Tally never sends it anywhere.
        include_local_variables=False,
    )
