"""Sentry receives one envelope per unhandled error, tagged with the release; nothing without a DSN."""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import brotli
import pytest
import sentry_sdk
from flask import Flask
from sqlalchemy import text

from harness.flask_app import make_config, migrated_app
from harness.procs import wait_until
from tests.app.helpers import released_version


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.envelopes: list[tuple[str, bytes]] = []


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        encoding = self.headers.get("Content-Encoding")
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "br":
            body = brotli.decompress(body)
        self.server.envelopes.append((self.path, body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        sentry_sdk.init(dsn=None)  # leave no active client behind for other tests


def with_failing_route(app: Flask) -> Flask:
    def explode() -> str:
        raise RuntimeError("boom for sentry")

    app.add_url_rule("/explode", view_func=explode)
    return app


def test_unhandled_error_reaches_sentry_with_release(pg_database: str, receiver: Receiver) -> None:
    dsn = f"http://publickey@127.0.0.1:{receiver.server_address[1]}/42"
    app = with_failing_route(migrated_app(make_config(pg_database, SENTRY_DSN=dsn, BUILD_NUMBER="7")))
    response = app.test_client().get("/explode")
    assert response.status_code == 500
    assert "Traceback" not in response.get_data(as_text=True)
    sentry_sdk.flush(timeout=5)
    wait_until(lambda: receiver.envelopes, timeout=30, message="a Sentry envelope")
    events = [
        json.loads(line)
        for path, body in receiver.envelopes
        if path == "/api/42/envelope/"
        for line in body.splitlines()
        if line.startswith(b"{") and b'"exception"' in line
    ]
    assert len(events) == 1
    assert events[0]["release"] == f"{released_version()}+build.7"
    assert events[0]["exception"]["values"][0]["value"] == "boom for sentry"


def sentry_exceptions(receiver: Receiver) -> list[dict[str, object]]:
    sentry_sdk.flush(timeout=5)
    wait_until(lambda: receiver.envelopes, timeout=5, message="a Sentry envelope")
    return [
        value
        for path, body in receiver.envelopes
        if path == "/api/42/envelope/"
        for line in body.splitlines()
        if line.startswith(b"{") and b'"exception"' in line
        for value in json.loads(line)["exception"]["values"]
    ]


def test_sql_error_is_a_500_in_sentry_not_an_outage(
    pg_database: str, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bug in our SQL (here: a table the statement needs is missing) must not pass for a database outage."""
    dsn = f"http://publickey@127.0.0.1:{receiver.server_address[1]}/42"
    app = migrated_app(make_config(pg_database, SENTRY_DSN=dsn))
    with app.extensions["tally"].engine.connect() as connection:
        connection.execute(text("ALTER TABLE daily_shards RENAME TO daily_shards_gone"))
    response = app.test_client().get("/", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert response.status_code == 500
    assert "Internal error" in response.get_data(as_text=True)
    assert "Retry-After" not in response.headers
    log = capsys.readouterr().out
    assert '"message": "unhandled error"' in log
    assert '"message": "database unavailable"' not in log
    assert [value["type"] for value in sentry_exceptions(receiver)][-1] == "ProgrammingError"


def test_no_dsn_means_no_client(pg_database: str) -> None:
    sentry_sdk.init(dsn=None)
    app = with_failing_route(migrated_app(make_config(pg_database)))
    assert app.test_client().get("/explode").status_code == 500
    assert sentry_sdk.get_client().transport is None
