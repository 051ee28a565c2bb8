"""A gunicorn worker with a request running past ``GUNICORN_TIMEOUT`` is wedged: it exits and the gunicorn
master starts a fresh one in its place, without an operator.

gunicorn's own timeout only restarts a worker whose main loop stops heart-beating. With threads (the gthread
worker we run) the loop keeps beating while every thread is stuck, e.g. in a database that stopped answering
without closing its connections, so that timeout never fires and the replica stays wedged. Docker does not
restart an unhealthy container either, so the worker ends itself.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)
# EX_SOFTWARE: gunicorn's master logs the exit status and boots a replacement.
WEDGED_EXIT_STATUS = 70


class RequestWatchdog:
    """Tracks when each in-flight request started; ``check`` ends the process once one is too old."""

    def __init__(
        self,
        limit_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        exit_process: Callable[[int], object] = os._exit,
    ) -> None:
        self.limit_s = limit_s
        self._clock = clock
        self._exit = exit_process
        self._started: dict[int, float] = {}
        self._lock = threading.Lock()

    def begin(self, request: object) -> None:
        with self._lock:
            self._started[id(request)] = self._clock()

    def end(self, request: object) -> None:
        with self._lock:
            self._started.pop(id(request), None)

    def oldest_s(self) -> float:
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return 0.0 if oldest is None else self._clock() - oldest

    def check(self) -> bool:
        """True while the worker is healthy; ends the process (without cleanup: its threads are stuck)."""
        age = self.oldest_s()
        if age <= self.limit_s:
            return True
        log.critical(
            "worker wedged: a request has run past GUNICORN_TIMEOUT; exiting so gunicorn starts a fresh worker",
            extra={"request_age_s": round(age, 1), "limit_s": self.limit_s, "in_flight": len(self._started)},
        )
        logging.shutdown()
        self._exit(WEDGED_EXIT_STATUS)
        return False

    def watch(self, interval_s: float = 1.0) -> threading.Thread:
        def loop() -> None:
            while self.check():
                time.sleep(interval_s)

        thread = threading.Thread(target=loop, name="tally-watchdog", daemon=True)
        thread.start()
        return thread
