"""The stack of the native drills: real PostgreSQL 15, the app under the production gunicorn config
(N replicas, each its own gunicorn master on its own port), the real Traefik in front with the stack's
own configuration (harness/traefik.py) and, when asked, Prometheus + Alertmanager + the alert
webhook from harness/observability.py.

Every process is started in its own session and stopped by PID in ``close`` (also on failure).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import requests
import urllib3

from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.observability import ObservabilityStack
from harness.postgres import PostgresServer
from harness.procs import free_port, wait_for, wait_until
from harness.traefik import Traefik, health_check_bound_s

DATABASE = "tally"
REPLICA_ALERT = "AppReplicasBelowMinimum"
# The alert waits 2m in production; the drill shortens only its `for:` (nothing else is rewritten),
# so what is measured is scrape -> rule -> Alertmanager -> webhook with our real files.
ALERT_FOR_OVERRIDES = {REPLICA_ALERT: "3s"}
# Every drill's load comes from one address (127.0.0.1), at up to a few hundred requests per second: under
# the stack's per-client limit of 20/s it would measure the rate limit, not the fault. The drills raise only
# that limit; everything else Traefik does (routing, retries, timeouts, health checks, TLS, headers) is the
# stack's own configuration. The rate limit itself is tested natively and on the engine (tests/stack,
# tests/e2e).
RATE_LIMIT_OVERRIDE = {"rate-limit": {"rateLimit": {"average": 100_000, "burst": 100_000}}}


@dataclass
class NativeStack:
    workdir: Path
    pg: PostgresServer
    database_url: str
    envs: list[dict[str, str]]
    replicas: list[Gunicorn] = field(default_factory=list)
    traefik: Traefik | None = None
    observability: ObservabilityStack | None = None
    restarts: int = 0

    @property
    def lb(self) -> Traefik:
        assert self.traefik is not None, "started without Traefik"
        return self.traefik

    @classmethod
    @contextlib.contextmanager
    def running(
        cls,
        workdir: Path,
        *,
        replicas: int = 2,
        max_connections: int = 100,
        alerting: bool = False,
        env: dict[str, str] | None = None,
    ) -> Iterator[NativeStack]:
        workdir.mkdir(parents=True, exist_ok=True)
        pg = PostgresServer.create(max_connections=max_connections)
        stack = cls(workdir=workdir, pg=pg, database_url="", envs=[])
        try:
            stack.database_url = pg.create_database(DATABASE)
            migrated = migrate(stack.database_url, workdir)
            if migrated.returncode != 0:
                raise AssertionError(f"migration failed:\n{migrated.stdout}{migrated.stderr}")
            for index in range(replicas):
                # Fixed ports per replica: a restarted replica comes back where the balancer expects it.
                replica_dir = workdir / f"replica-{index}"
                replica_dir.mkdir(exist_ok=True)
                stack.envs.append(
                    base_env(
                        stack.database_url,
                        replica_dir,
                        PORT=str(free_port()),
                        METRICS_PORT=str(free_port()),
                        TRUSTED_PROXY_HOPS="1",
                        DRAIN_MARKER=str(replica_dir / "draining"),
                        **(env or {}),
                    )
                )
            for index in range(replicas):
                stack.replicas.append(run_gunicorn(stack.envs[index], stack.log_path(index)))
            stack.traefik = Traefik.start(
                workdir / "traefik",
                [replica.url for replica in stack.replicas],
                middleware_overrides=RATE_LIMIT_OVERRIDE,
            )
            stack.wait_servers_up(timeout=health_check_bound_s() + 5)
            if alerting:
                (workdir / "observability").mkdir(exist_ok=True)
                observability = ObservabilityStack(workdir=workdir / "observability")
                stack.observability = observability
                observability.start_alerting()
                observability.start_prometheus(
                    {"tally-app": [f"127.0.0.1:{r.metrics_port}" for r in stack.replicas]},
                    for_overrides=ALERT_FOR_OVERRIDES,
                )
                wait_until(
                    lambda: _replicas_up(observability) == len(stack.replicas),
                    timeout=30,
                    interval=0.25,
                    message="Prometheus scraping every replica",
                )
            yield stack
        finally:
            stack.close()

    # ------------------------------------------------------------------ replicas

    def log_path(self, index: int) -> Path:
        return self.workdir / f"replica-{index}.log"

    def drain(self, index: int, timeout: float) -> float:
        """What scripts/deploy.sh does before it stops a replica (app/drain.py, by hand: natively every
        replica shares 127.0.0.1, which app.drain cannot tell apart): /readyz answers 503 until Traefik's
        health check has taken the replica out of rotation."""
        Path(self.envs[index]["DRAIN_MARKER"]).touch()
        return self.wait_server(index, False, timeout)

    def restart(self, index: int) -> Gunicorn:
        Path(self.envs[index]["DRAIN_MARKER"]).unlink(missing_ok=True)
        self.replicas[index] = run_gunicorn(self.envs[index], self.log_path(index))
        self.restarts += 1
        return self.replicas[index]

    def logs(self) -> str:
        return "\n".join(self.log_path(i).read_text(errors="replace") for i in range(len(self.envs)))

    def wait_server(self, index: int, up: bool, timeout: float) -> float:
        """Wait until Traefik's health check has taken replica ``index`` in (``up``) or out of rotation."""
        url = self.replicas[index].url  # a restarted replica keeps its port, so its URL
        _, waited = wait_for(
            lambda: self.lb.server_up().get(url) is up,
            timeout,
            f"Traefik marks {url} {'up' if up else 'down'}",
            interval=0.05,
        )
        return waited

    def wait_servers_up(self, timeout: float) -> None:
        for index in range(len(self.replicas)):
            self.wait_server(index, True, timeout)

    # ------------------------------------------------------------------ database

    def db_value(self, sql: str) -> int:
        [(value,)] = self.pg.execute(sql, DATABASE)
        return int(str(value or 0))

    def total_visits(self) -> int:
        return self.db_value("SELECT coalesce(sum(visits), 0) FROM visitors")

    def total_visitors(self) -> int:
        return self.db_value("SELECT count(*) FROM visitors")

    def counters_consistent(self) -> bool:
        """The app's own invariant: the sharded totals agree with the visitor rows."""
        return self.total_visits() == self.db_value(
            "SELECT coalesce(sum(visits), 0) FROM total_shards"
        ) and self.total_visitors() == self.db_value("SELECT coalesce(sum(visitors), 0) FROM total_shards")

    # ------------------------------------------------------------------ alerts

    def _alert_statuses(self) -> list[str]:
        """Statuses of the replica alert in the order the webhook received them."""
        assert self.observability is not None and self.observability.webhook is not None
        return [
            alert["status"]
            for record in self.observability.webhook.notifications()
            for alert in record["alerts"]
            if alert["labels"].get("alertname") == REPLICA_ALERT
        ]

    def alert_quiet(self) -> int:
        """Wait until the replica alert is inactive (start-up scrapes can trip it briefly, since the
        drill shortens its `for:`) and return a mark: only notifications after it count."""
        assert self.observability is not None and self.observability.prometheus is not None
        prometheus = self.observability.prometheus
        wait_until(
            lambda: (
                not any(
                    a["labels"].get("alertname") == REPLICA_ALERT
                    for a in requests.get(f"{prometheus.url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
                )
                and (not self._alert_statuses() or self._alert_statuses()[-1] == "resolved")
            ),
            timeout=60,
            interval=0.25,
            message="replica alert inactive before the drill",
        )
        return len(self._alert_statuses())

    def alert_after(self, mark: int, *sequence: str) -> bool:
        """The webhook received ``sequence`` (e.g. firing, resolved) in order after ``mark``."""
        statuses = iter(self._alert_statuses()[mark:])
        return all(any(status == wanted for status in statuses) for wanted in sequence)

    # ------------------------------------------------------------------ cleanup

    def close(self) -> None:
        errors: list[BaseException] = []
        steps: list[Callable[[], object]] = []
        if self.observability is not None:
            steps.append(self.observability.close)
        if self.traefik is not None:
            steps.append(self.traefik.stop)
        steps += [partial(r.stop, signal.SIGKILL, timeout=10) for r in self.replicas]
        steps.append(self.pg.destroy)
        for step in steps:
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up, report the first error after
                errors.append(exc)
        if errors:
            raise errors[0]


def _replicas_up(observability: ObservabilityStack) -> int:
    assert observability.prometheus is not None
    samples = observability.prometheus.samples('sum(up{job="tally-app"})')
    return int(float(samples[0]["value"][1])) if samples else 0


# The drills reach Traefik at https://localhost with its self-signed default certificate, knowingly.
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def get_ok(url: str, timeout: float = 5) -> bool:
    """One GET answered 200; through Traefik over TLS its self-signed default certificate is accepted."""
    try:
        return requests.get(url, timeout=timeout, verify=False).status_code == 200  # noqa: S501
    except requests.RequestException:
        return False
