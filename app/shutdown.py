"""SIGTERM without a drain first: keep serving until the proxy has taken the replica out, then stop.

Whatever stops a replica without draining it (a Docker Swarm rolling update, `docker compose stop` or
`up -d` recreating it) sends SIGTERM while Traefik still routes to it: its Swarm provider drops a task only
at its next poll, and its health check sees a replica go only at its next check. Gunicorn's own SIGTERM
closes the listener at once, and a request Traefik sent in that window is refused (retried elsewhere) or,
if it was already in the listen backlog, reset after it was written: a 502 that cannot be retried, since
the request may have been counted. So with ``SHUTDOWN_DELAY`` set, the gunicorn master's first SIGTERM
creates ``DRAIN_MARKER`` (``/readyz`` answers 503 ``draining``) and starts the delay while every request is
still served; the stop proper (gunicorn's graceful one) comes when the delay ends, or at once on a second
SIGTERM. Kubernetes users know this as the pre-stop sleep; Swarm has no hook for it.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def delay_termination(arbiter: Any, delay: float, drain_marker: Path | None) -> None:
    """Make a gunicorn ``Arbiter`` serve on for ``delay`` seconds after its first SIGTERM.

    The arbiter runs ``handle_term`` from its main loop (never inside the signal handler), so this one may
    log and start a thread; gunicorn offers no setting for a delay, hence replacing its handler."""
    stop: Callable[[], None] = arbiter.handle_term
    draining = threading.Event()

    def handle_term() -> None:
        if draining.is_set():
            stop()  # raises StopIteration: gunicorn's graceful stop
        draining.set()
        if drain_marker is not None:
            try:
                drain_marker.touch()
            except OSError as exc:
                arbiter.log.warning("SIGTERM: cannot create the drain marker %s: %s", drain_marker, exc)
        arbiter.log.info("SIGTERM: serving %g s more while the proxy takes this replica out, then stopping", delay)
        timer = threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()

    arbiter.handle_term = handle_term
