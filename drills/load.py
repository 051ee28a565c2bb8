"""Locust, headless, at a steady rate for as long as a drill needs it, and what it saw."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness import REPO_ROOT
from harness.procs import read_log, start_logged, stop_process, wait_ready
from harness.tools import find_tool

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
# Users finish the request they are in when the load stops, so every request that reached the
# app is in the ledger (a request cut off by Locust could be counted without being recorded).
STOP_TIMEOUT_S = 15


@dataclass(frozen=True)
class Request:
    start: float
    latency_ms: float
    status: int
    ok: bool
    visit: bool

    @property
    def end(self) -> float:
        return self.start + self.latency_ms / 1000


@dataclass
class LoadResult:
    requests: list[Request] = field(default_factory=list)
    started_at: float = 0.0
    stopped_at: float = 0.0

    @property
    def visits(self) -> list[Request]:
        return [r for r in self.requests if r.visit]

    @property
    def visit_ok(self) -> int:
        return sum(1 for r in self.visits if r.ok)

    @property
    def visit_failed(self) -> int:
        return sum(1 for r in self.visits if not r.ok)

    @property
    def failed(self) -> int:
        return sum(1 for r in self.requests if not r.ok)

    @property
    def rate(self) -> float:
        span = self.stopped_at - self.started_at
        return len(self.requests) / span if span > 0 else 0.0

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for r in self.requests:
            counts[r.status] = counts.get(r.status, 0) + 1
        return dict(sorted(counts.items()))


def parse_ledger(text: str) -> list[Request]:
    requests = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue  # a line cut short by a killed generator
        start, latency, status, ok, kind = parts
        requests.append(Request(float(start), float(latency), int(status), ok == "1", kind == "visit"))
    return requests


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
        ledger = workdir / "ledger.txt"
        ledger.write_text("")
        log_path = workdir / "locust.log"
        env = os.environ | {
            "DRILL_LEDGER": str(ledger),
            "LOADTEST_USER_RPS": str(user_rps),
            "LOADTEST_INSECURE": "1" if insecure else "",
        }
        argv = [
            find_tool("locust", "make venv (requirements-dev)"),
            "--locustfile",
            str(LOCUSTFILE),
            "--host",
            host,
            "--headless",
            "--users",
            str(users),
            "--spawn-rate",
            str(users),
            "--stop-timeout",
            str(STOP_TIMEOUT_S),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        process = start_logged("locust", argv, log_path, cwd=REPO_ROOT, env=env, ready=None)
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
        # SIGTERM: Locust stops its users (waiting up to --stop-timeout for the request in flight).
        stop_process(self.process, timeout=STOP_TIMEOUT_S + 15, sig=signal.SIGTERM)
        return LoadResult(self.snapshot(), self.started_at, stopped_at)

    def kill(self) -> None:
        stop_process(self.process, timeout=5, sig=signal.SIGKILL)
