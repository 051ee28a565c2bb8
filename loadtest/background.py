"""The Locust suite, headless in the background for as long as a caller (a drill, an e2e test) needs it,
and the ledger of what it saw (ledger.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness import REPO_ROOT
from harness.procs import read_log, start_logged, stop_process, wait_ready
from loadtest import MAX_DURATION_S, locust_command
from loadtest.ledger import LoadResult, Request, parse_ledger

# Users finish the request they are in when the load stops, so every request that reached the
# app is in the ledger (a request cut off by Locust could be counted without being recorded).
STOP_TIMEOUT_S = 15
# The drills' mix: the suite's user classes but VersionChecker.
USER_CLASSES = ("ReturningVisitor", "NewVisitor", "StatsReader")
LEDGER = "ledger.txt"


def command(host: str, workdir: Path, users: int) -> list[str]:
    """What ``Load.start`` runs (pacing and TLS checks come from the environment, see users.py)."""
    return locust_command(
        host,
        "--ledger",
        str(workdir / LEDGER),
        # The smoke shape: every user at once, at a steady rate, until ``stop`` (or the bound).
        "--shape",
        "smoke",
        "--shape-users",
        str(users),
        "--shape-duration",
        str(MAX_DURATION_S),
        "--stop-timeout",
        str(STOP_TIMEOUT_S),
        "--loglevel",
        "WARNING",
        *USER_CLASSES,
    )


@dataclass
class Load:
    """One headless Locust process; ``stop`` ends it the way an operator's Ctrl-C would."""

    process: subprocess.Popen[bytes]
    ledger: Path
    log_path: Path
    started_at: float

    @classmethod
    def start(cls, host: str, workdir: Path, *, users: int, user_rps: float | str, insecure: bool = False) -> Load:
        workdir.mkdir(parents=True, exist_ok=True)
        ledger = workdir / LEDGER
        ledger.write_text("")
        log_path = workdir / "locust.log"
        env = os.environ | {"LOADTEST_USER_RPS": str(user_rps), "LOADTEST_INSECURE": "1" if insecure else ""}
        process = start_logged("locust", command(host, workdir, users), log_path, cwd=REPO_ROOT, env=env, ready=None)
        load = cls(process, ledger, log_path, time.time())
        # Running means requests are being answered, not just that the process exists.
        wait_ready(
            "locust",
            process,
            log_path,
            lambda: len(parse_ledger(ledger.read_text())) >= users,
            message="locust sending requests",
        )
        return load

    def log(self) -> str:
        return read_log(self.log_path)

    def alive(self) -> bool:
        return self.process.poll() is None

    def snapshot(self) -> list[Request]:
        return parse_ledger(self.ledger.read_text())

    def stop(self) -> LoadResult:
        stopped_at = time.time()
        # SIGINT (Ctrl-C): Locust stops its users, waiting up to --stop-timeout for the request in flight.
        # Not SIGTERM: Locust 2.47 installs its SIGTERM handler only after a shape's run, so while the
        # shape runs SIGTERM kills it on the spot and the requests in flight never reach the ledger.
        stop_process(self.process, timeout=STOP_TIMEOUT_S + 15, sig=signal.SIGINT)
        return LoadResult(self.snapshot(), self.started_at, stopped_at)

    def kill(self) -> None:
        stop_process(self.process, timeout=5, sig=signal.SIGKILL)
