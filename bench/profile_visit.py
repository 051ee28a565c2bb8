"""What one visit costs inside the app process: CPU per visit, round trips per visit, where it goes.

    .venv/bin/python -m bench.profile_visit [--visits 3000] [--top 25]

Robust on a busy machine, unlike throughput: it counts the CPU time of this process only (and
round trips, which do not depend on load). It drives the WSGI app directly (no HTTP server, no
load generator), as gunicorn would call it, with the production settings that cost CPU:
multiprocess metrics files, TRUSTED_PROXY_HOPS=1, the PostgreSQL engine of the app. A hello-world
Flask route is measured the same way for reference. PostgreSQL's own work is not counted here
(that is pgbench's side of the composite in ``make bench``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
AREAS = (
    ("psycopg", "driver (psycopg)"),
    ("sqlalchemy", "SQLAlchemy"),
    ("jinja2", "templates (Jinja2)"),
    ("prometheus", "metrics (prometheus)"),
    ("werkzeug", "Werkzeug"),
    ("flask", "Flask"),
    ("/app/", "app code"),
    ("gunicorn", "gunicorn"),
)
OTHER_AREA = "other (stdlib, C calls)"


def environ(address: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_X_FORWARDED_FOR": address,
        "HTTP_USER_AGENT": "profile",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call(app: WSGIApp, address: str) -> int:
    status: list[str] = []
    body = b"".join(app(environ(address), lambda s, _h, _e=None: status.append(s)))
    if not status[0].startswith("200") or not body:
        raise SystemExit(f"profile: visit failed: {status[0]} {body[:300]!r}")
    return len(body)


def measure(app: WSGIApp, addresses: list[str]) -> float:
    """CPU microseconds per request of this process (all threads: the app is called in this one)."""
    started = time.process_time()
    for address in addresses:
        call(app, address)
    return 1e6 * (time.process_time() - started) / len(addresses)


def area_of(filename: str) -> str:
    return next((label for key, label in AREAS if key in filename), OTHER_AREA)


def areas(profile: cProfile.Profile) -> dict[str, float]:
    """Own (tottime) CPU by library, in percent: where the time goes, without double counting."""
    stats = pstats.Stats(profile)
    totals: Counter[str] = Counter()
    for (filename, _line, _name), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        totals[area_of(filename)] += tottime
    whole = sum(totals.values()) or 1.0
    return {label: round(100 * value / whole, 1) for label, value in totals.most_common()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_visit", description=__doc__.splitlines()[0])
    parser.add_argument("--visits", type=int, default=3000)
    parser.add_argument("--top", type=int, default=25, help="functions to list by own time")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tally-profile-"))
    # prometheus_client picks its value class from this variable at import time, as in a gunicorn worker.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(work / "metrics")
    (work / "metrics").mkdir()

    from sqlalchemy import event

    from bench.hello import app as hello
    from harness.flask_app import make_config, migrated_app, watch_statements
    from harness.postgres import PostgresServer

    pg = PostgresServer.create()
    try:
        config = make_config(
            pg.create_database("tally"), TRUSTED_PROXY_HOPS="1", PROMETHEUS_MULTIPROC_DIR=str(work / "metrics")
        )
        app = migrated_app(config)
        engine = app.extensions["tally"].engine
        round_trips: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", lambda *_a: round_trips.update(["statement"]))
        # The visit runs on the driver's cursor, below SQLAlchemy's cursor events (app/counting.py).
        watch_statements(engine, before=lambda _connection: round_trips.update(["driver statement"]))
        if engine.pool._pre_ping:  # noqa: SLF001 - the pre-ping bypasses cursor events; count it here
            event.listen(engine.pool, "checkout", lambda *_a: round_trips.update(["pre-ping"]))

        n = args.visits
        new = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(1, n + 1)]
        returning = [f"10.200.0.{i % 200}" for i in range(n)]
        for address in returning[:300]:  # warm: connections, prepared statements, caches
            call(app.wsgi_app, address)
        measure(hello.wsgi_app, returning[:300])

        round_trips.clear()
        results = {
            "hello_us": measure(hello.wsgi_app, returning),
            "new_us": measure(app.wsgi_app, new),
            "returning_us": measure(app.wsgi_app, returning),
        }
        trips = {kind: round(count / (2 * n), 2) for kind, count in round_trips.items()}
        hello_profile = cProfile.Profile(time.process_time)
        hello_profile.runcall(measure, hello.wsgi_app, returning[: n // 2])
        profile = cProfile.Profile(time.process_time)
        profile.runcall(measure, app.wsgi_app, ["11" + address[2:] for address in new[: n // 2]])
        # Python function calls per request: deterministic, unlike CPU time on a shared machine.
        calls = {
            name: round(pstats.Stats(p).total_calls / (n // 2))  # type: ignore[attr-defined]
            for name, p in (("hello", hello_profile), ("new", profile))
        }

        print(f"CPU per request in the app process ({n} requests each, {engine.driver}):")
        for key, value in results.items():
            print(f"  {key.removesuffix('_us'):<10} {value:7.0f} us")
        extra = results["new_us"] - results["hello_us"]
        print(f"  visit minus hello-world: {extra:.0f} us")
        print(f"round trips per visit: {trips} (total {sum(trips.values()):g})")
        print(f"Python function calls per request: {calls}")
        print("own CPU by area (cProfile, new visitors):")
        for label, share in areas(profile).items():
            print(f"  {share:5.1f} %  {label}")
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(args.top)
        print(out.getvalue())
    finally:
        pg.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
