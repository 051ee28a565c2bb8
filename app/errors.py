"""Every failure gets an honest status code and a friendly body; a database outage is a 503."""

from __future__ import annotations

import logging

import sentry_sdk
from flask import Flask, Response, jsonify, render_template, request
from flask.globals import request_ctx
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

from .identity import BadClientAddress
from .logs import request_id

log = logging.getLogger(__name__)
JSON_PREFIXES = ("/api/", "/version", "/healthz", "/readyz")
RETRY_AFTER_SECONDS = "5"


def _respond(status: int, title: str, message: str) -> Response:
    if request.path.startswith(JSON_PREFIXES):
        response = jsonify(error=title, message=message, request_id=request_id())
    elif request_ctx.url_adapter is None:
        # Werkzeug could not bind the request (e.g. an invalid Host header): without a URL adapter the
        # page's url_for() would fail, so answer in plain text.
        response = Response(f"{title}: {message}\n", mimetype="text/plain")
    else:
        response = Response(
            render_template("error.html", status=status, title=title, message=message, request_id=request_id()),
            mimetype="text/html",
        )
    response.status_code = status
    return response


def is_connection_failure(error: SQLAlchemyError) -> bool:
    """Failures of reaching the database, not of what we asked it: a refused or dropped connection,
    an exhausted pool, a statement or lock timeout (PostgreSQL reports those as operational errors)."""
    if isinstance(error, OperationalError | DisconnectionError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def database_error(error: SQLAlchemyError) -> Response:
    if is_connection_failure(error):
        return database_unavailable(error)
    # Anything else is a bug in our SQL or schema: it must reach the logs and Sentry, not pass as an outage.
    return unexpected_error(error)


def database_unavailable(error: Exception) -> Response:
    # One line, no traceback: an outage would otherwise flood the log with identical stacks.
    log.error("database unavailable", extra={"error": type(error).__name__, "detail": str(error).splitlines()[0][:300]})
    response = _respond(
        503, "Temporarily unavailable", "We cannot reach our database right now. Please try again shortly."
    )
    response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    return response


def bad_client_address(_error: BadClientAddress) -> Response:
    log.warning("rejected request with an invalid client address")
    return _respond(400, "Bad request", "Your client address could not be determined.")


def http_error(error: HTTPException) -> Response:
    response = _respond(error.code or 500, error.name, error.description or "")
    # The exception carries headers the status requires (Allow on 405, WWW-Authenticate on 401, Retry-After
    # on 429/503); the friendly body replaces Werkzeug's response, not those headers.
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def unexpected_error(error: Exception) -> Response:
    log.exception("unhandled error", extra={"error": type(error).__name__})
    # A registered handler swallows the exception before Sentry's Flask hook sees it.
    sentry_sdk.capture_exception(error)
    return _respond(500, "Internal error", "Something went wrong on our side.")


def register_error_handlers(app: Flask, driver_operational_error: type[Exception]) -> None:
    app.register_error_handler(SQLAlchemyError, database_error)
    # SQLAlchemy wraps the driver's errors, except those raised where it does not (e.g. a pool callback).
    app.register_error_handler(driver_operational_error, database_unavailable)
    app.register_error_handler(BadClientAddress, bad_client_address)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected_error)
