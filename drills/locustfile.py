"""Steady load for the drills: the load-test suite's visitor classes, plus a ledger of every request.

Locust's own statistics aggregate; a drill needs to know *when* each request ran and what came
back (every response while the database was down must be a 503). Each finished request appends
one line to ``DRILL_LEDGER``: ``start_epoch_s latency_ms status ok kind`` where ``ok`` is 1 only for
the success the user class checks (for a visit: status 200 *and* the page's visit line) and
``kind`` is ``visit`` for ``GET /`` (the only request that counts; told by method and URL path, not
by the user classes' display names) or ``other``.

Pacing comes from loadtest/users.py: ``LOADTEST_USER_RPS`` requests per second per user.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from locust import events

from loadtest.users import NewVisitor, ReturningVisitor, StatsReader

__all__ = ["NewVisitor", "ReturningVisitor", "StatsReader"]

_ledger = open(os.environ["DRILL_LEDGER"], "a", buffering=1)  # noqa: SIM115 - open for the process lifetime


@events.request.add_listener
def _record(
    request_type: str,
    response_time: float,
    response: Any = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    url: str | None = None,
    **_kwargs: Any,
) -> None:
    status = getattr(response, "status_code", 0) or 0
    ok = int(exception is None and status == 200)
    kind = "visit" if request_type == "GET" and urlsplit(url or "").path in ("", "/") else "other"
    _ledger.write(f"{start_time or 0:.3f} {response_time:.1f} {status} {ok} {kind}\n")


@events.quit.add_listener
def _close(**_kwargs: Any) -> None:
    _ledger.flush()
