"""The floor of a visit in Flask: hello-world plus the app's own visit statement, and nothing else.

    gunicorn -c gunicorn.conf.py bench.floor:app      (BENCH_FLOOR_DSN: the benchmark's database)

The least a Flask route that records a visit does with this server, driver and statement: the request
through gunicorn, Werkzeug and Flask as in bench/hello.py, the visitor's key (the app's HMAC of the
forwarded address), and the app's prepared visit statement on the worker thread's own driver connection
(``execute_visit``), i.e. a round trip to PostgreSQL during which the thread waits. Nothing the app adds
around it: no pool, no metrics, no request id, no checks, no page, no error handling. ``make bench`` and
bench/profile_load.py measure it next to hello-world and `GET /`: between hello-world and the floor lie
the key and the round trip; between the floor and `GET /`, what the app adds.
"""

from __future__ import annotations

import os
import random
import threading
from typing import Any

import psycopg2
from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from app.counting import execute_visit, utc_today
from app.identity import visitor_key
from app.models import COUNTER_SHARDS

app = Flask(__name__)
# The load generator plays the one trusted proxy, as TRUSTED_PROXY_HOPS=1 makes the app believe it.
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1)  # type: ignore[method-assign]
_secret = os.environ.get("SECRET_KEY", "bench-floor").encode()
_thread = threading.local()


def _connection() -> tuple[Any, dict[str, Any]]:
    """The thread's own driver connection and what execute_visit keeps about it (a pool's ``info``)."""
    if not hasattr(_thread, "connection"):
        # Named as the app's sessions are, so make bench's pg_stat_activity samples see these too.
        _thread.connection = psycopg2.connect(os.environ["BENCH_FLOOR_DSN"], application_name="tally")
        _thread.connection.autocommit = True
        _thread.info = {}
    return _thread.connection, _thread.info


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.get("/")
def visit() -> str:
    connection, info = _connection()
    params = {
        "key": visitor_key(_secret, request.remote_addr or ""),
        "today": utc_today(),
        "shard": random.randrange(COUNTER_SHARDS),
    }
    with connection.cursor() as cursor:
        visits, _new, _new_today, total_visitors, today_visitors = execute_visit(cursor, info, params)
    return f"{visits} {total_visitors} {today_visitors}"
