"""The same drills against a running compose stack, for operators and for the e2e suite, which runs them
against its stack on a real engine through the real Traefik (tests/e2e/test_4_drills.py). The command
construction is also tested without an engine: ``--dry-run`` prints every command instead.

Which stack: compose's own rules. Without ``--file`` the ``docker compose`` calls read COMPOSE_FILE,
COMPOSE_ENV_FILES and COMPOSE_PROJECT_NAME from the environment (else compose.yaml and .env of
``--project-dir``), as an operator's own ``docker compose`` does.

Differences from the native drills, by design:

* the faults are Docker's: ``docker kill`` (SIGKILL to the whole container), ``docker stop``
  (SIGTERM, SIGKILL after the compose stop_grace_period), ``docker compose stop/start postgres``
  (the postgres image stops on SIGINT: a fast shutdown, like the native ``pg_ctl -m fast``),
  ``docker compose up --scale app=N`` for connection exhaustion;
* the load goes through Traefik over HTTPS (``--insecure`` for the default self-signed
  certificate) from ONE client address, so Traefik's rate limit (traefik/dynamic/middlewares.yml,
  20 req/s average per client) caps the useful rate: the defaults stay below it;
* the alert is read from Alertmanager inside the stack, with the production ``for:`` (2 minutes);
  ``alert=False`` skips that wait (the e2e suite checks the alert's delivery in its own test);
* a graceful restart drains each replica from Traefik first (``python -m app.drain``, as
  scripts/deploy.sh does), then stops it;
* Traefik's retries are not observable from outside, so extra counts beyond acknowledged visits
  are reported but not judged; lost acknowledged visits are.
"""

from __future__ import annotations

import json
import shlex
import ssl
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from harness import REPO_ROOT
from harness.procs import wait_for
from loadtest import background
from loadtest.background import Load

from . import badinput
from .report import DrillResult, Ledger, percent

REPLICA_ALERT = "AppReplicasBelowMinimum"
ALERTMANAGER_API = "http://127.0.0.1:9093/api/v2/alerts?filter=alertname%3D%22" + REPLICA_ALERT + "%22"
# 2m `for:` + scrape and evaluation intervals + Alertmanager group_wait.
ALERT_DEADLINE_S = 300
STOP_GRACE_S = 30  # compose/app.yaml stop_grace_period
# Feeds the drain Traefik's metrics, read inside Traefik's container (the replicas do not reach its metrics
# port, traefik/dynamic/metrics.yml): the deploy script's own feed, so both drain the same way.
DEPLOY_SCRIPT = REPO_ROOT / "scripts" / "deploy.sh"
DRAIN_TIMEOUT_S = 15
# The visitor-facing bound around a replica loss (docs/reliability.md): reported, not judged.
SLOW_RESPONSE_S = 5.0


@dataclass(frozen=True)
class ComposeCommands:
    """argv lists for every action; nothing here runs anything."""

    project_dir: Path = REPO_ROOT
    # Empty: compose's defaults (COMPOSE_FILE / COMPOSE_ENV_FILES from the environment, else the
    # project directory's compose.yaml and .env).
    files: tuple[str, ...] = ()
    env_files: tuple[str, ...] = ()
    project: str | None = None
    docker: str = "docker"

    def compose(self, *args: str) -> list[str]:
        argv = [self.docker, "compose", "--project-directory", str(self.project_dir)]
        for compose_file in self.files:
            argv += ["--file", compose_file]
        for env_file in self.env_files:
            argv += ["--env-file", env_file]
        if self.project:
            argv += ["--project-name", self.project]
        return [*argv, *args]

    def app_containers(self) -> list[str]:
        return self.compose("ps", "--quiet", "app")

    def kill(self, container: str) -> list[str]:
        return [self.docker, "kill", "--signal", "KILL", container]

    def stop(self, container: str, grace_s: int = STOP_GRACE_S) -> list[str]:
        return [self.docker, "stop", "--time", str(grace_s), container]

    def start(self, container: str) -> list[str]:
        return [self.docker, "start", container]

    def addresses(self, container: str) -> list[str]:
        return [
            self.docker,
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container,
        ]

    def traefik_container(self) -> list[str]:
        return self.compose("ps", "--quiet", "traefik")

    def drain(self, container: str, addresses: Sequence[str], traefik: str) -> list[str]:
        """app.drain in the replica, fed Traefik's metrics; the pipeline's status is the drain's."""
        script = (
            'DOCKER="$1" bash "$2" --metrics-feed "$3" |'
            ' "$1" exec -i "$4" python -m app.drain --metrics-url - --timeout "$5" "${@:6}"'
        )
        return [
            "bash", "-c", script, "drain", self.docker, str(DEPLOY_SCRIPT), traefik, container, str(DRAIN_TIMEOUT_S),
            *addresses,
        ]  # fmt: skip

    def health(self, container: str) -> list[str]:
        return [self.docker, "inspect", "--format", "{{.State.Health.Status}} {{.RestartCount}}", container]

    def stop_service(self, service: str, timeout_s: int = 60) -> list[str]:
        return self.compose("stop", "--timeout", str(timeout_s), service)

    def start_service(self, service: str) -> list[str]:
        return self.compose("start", service)

    def scale_app(self, replicas: int) -> list[str]:
        return self.compose("up", "--detach", "--no-recreate", "--no-deps", "--scale", f"app={replicas}", "app")

    def recreate_postgres(self, max_connections: int | None) -> list[str]:
        """Recreate postgres (data stays in its volume) with another max_connections, or the default."""
        argv = self.compose("up", "--detach", "--no-deps", "--force-recreate", "--wait", "postgres")
        return ["env", f"POSTGRES_MAX_CONNECTIONS={max_connections}", *argv] if max_connections else argv

    def psql(self, sql: str) -> list[str]:
        return self.compose(
            "exec", "-T", "postgres", "psql", "--username", "tally", "--dbname", "tally",
            "--no-align", "--tuples-only", "--command", sql,
        )  # fmt: skip

    def replica_alerts(self) -> list[str]:
        return self.compose("exec", "-T", "alertmanager", "wget", "-q", "-O", "-", ALERTMANAGER_API)

    def app_logs(self, since: str) -> list[str]:
        return self.compose("logs", "--no-color", "--since", since, "app")


Runner = Callable[[list[str]], str]


def real_runner(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


@dataclass
class DryRunner:
    """Prints and records each command; answers with plausible output so a dry run walks every step."""

    commands: list[list[str]] = field(default_factory=list)
    echo: bool = True

    def __call__(self, argv: list[str]) -> str:
        self.commands.append(argv)
        if self.echo:
            print("+ " + shlex.join(argv), flush=True)
        if argv[-3:] == ["ps", "--quiet", "app"]:
            return "c0ffee000001\nc0ffee000002\n"
        if argv[-3:] == ["ps", "--quiet", "traefik"]:
            return "7ea0f1c00001\n"
        if "psql" in argv:
            return "0\n"
        if "inspect" in argv:
            return "172.31.240.10 172.31.241.10 \n" if "NetworkSettings" in argv[-2] else "healthy 0\n"
        if "wget" in argv:
            # First call: firing; later calls: resolved (empty list).
            fired = sum("wget" in c for c in self.commands) == 1
            return json.dumps(
                [{"labels": {"alertname": REPLICA_ALERT}, "status": {"state": "active"}}] if fired else []
            )
        return ""


@dataclass
class ComposeDrills:
    base_url: str = "https://localhost"
    commands: ComposeCommands = field(default_factory=ComposeCommands)
    run: Runner = real_runner
    users: int = 3
    user_rps: float = 4.0  # 12 req/s from one address: under Traefik's 20 req/s per-client limit
    steady_s: float = 30
    db_down_s: float = 10
    bad_requests: int = 2000
    insecure: bool = True
    alert: bool = True
    dry_run: bool = False
    workdir: Path = field(default_factory=lambda: Path("drill-results"))

    # ------------------------------------------------------------------ helpers

    def _hold(self, seconds: float) -> None:
        if not self.dry_run:
            time.sleep(seconds)  # a measurement window under load, not synchronisation

    def _wait(self, predicate: Callable[[], bool], timeout: float, message: str) -> float:
        if self.dry_run:
            predicate()
            return 0.0
        return round(wait_for(predicate, timeout, message, interval=1)[1], 1)

    def _visits(self) -> int:
        return int(self.run(self.commands.psql("SELECT coalesce(sum(visits), 0) FROM visitors")).strip() or 0)

    def _containers(self) -> list[str]:
        return self.run(self.commands.app_containers()).split()

    def _healthy(self, container: str) -> bool:
        return self.run(self.commands.health(container)).split()[:1] == ["healthy"]

    def _alert_active(self) -> bool:
        alerts = json.loads(self.run(self.commands.replica_alerts()) or "[]")
        return any(a["status"]["state"] == "active" for a in alerts)

    def _load(self, name: str) -> Load | None:
        if self.dry_run:
            argv = background.command(self.base_url, self.workdir / name, self.users)
            print(f"+ LOADTEST_USER_RPS={self.user_rps} {shlex.join(argv)}")
            return None
        return Load.start(
            self.base_url, self.workdir / name, users=self.users, user_rps=self.user_rps, insecure=self.insecure
        )

    def _finish(self, result: DrillResult, load: Load | None, visits_before: int) -> DrillResult:
        if load is None:
            return result
        outcome = load.stop()
        total = len(outcome.requests)
        result.figures.update(
            requests=total,
            failed=outcome.failed,
            failed_percent=percent(outcome.failed, total),
            statuses=outcome.statuses(),
        )
        # The slowest answer of the run (timings go to the report; judged only as a target).
        result.figures["slowest_response_s"] = round(max((r.latency_ms for r in outcome.requests), default=0) / 1000, 3)
        result.figures["last_statuses"] = [r.status for r in sorted(outcome.requests, key=lambda r: r.start)[-10:]]
        ledger = Ledger(
            ok=outcome.visit_ok, failed=outcome.visit_failed, retried=0, db_delta=self._visits() - visits_before
        )
        result.add_ledger(ledger)
        # Traefik's retries are invisible from here: extra counts are reported, not judged.
        result.violations = [v for v in result.violations if not v.startswith("unexplained-counts")]
        return result

    # ------------------------------------------------------------------ drills

    def replica_loss(self) -> DrillResult:
        result = DrillResult("replica-loss", "compose", "operator")
        before = self._visits()
        load = self._load("replica-loss")
        try:
            self._hold(self.steady_s)
            victim = self._containers()[-1]
            self.run(self.commands.kill(victim))
            if self.alert:
                result.figures["alert_fired_after_kill_s"] = self._wait(self._alert_active, ALERT_DEADLINE_S, "alert")
            else:
                self._hold(self.steady_s)  # serving on the survivors
            self.run(self.commands.start(victim))
            result.figures["healthy_after_start_s"] = self._wait(lambda: self._healthy(victim), 120, "healthy")
            if self.alert:
                result.figures["alert_resolved_s"] = self._wait(
                    lambda: not self._alert_active(), ALERT_DEADLINE_S, "resolved"
                )
            self._hold(self.steady_s)
        finally:
            self._finish(result, load, before)
        if load is not None:
            failed_percent = result.figures["failed_percent"]
            result.check(failed_percent <= 0.1, "failed-ratio", f"{failed_percent:.3f} % failed (limit 0.1 %)")
            slowest = result.figures["slowest_response_s"]
            result.timing(slowest <= SLOW_RESPONSE_S, "hang", f"a response took {slowest:.1f}s (target 5s)")
        return result

    def graceful_restart(self) -> DrillResult:
        result = DrillResult("graceful-restart", "compose", "operator")
        before = self._visits()
        load = self._load("graceful-restart")
        try:
            self._hold(self.steady_s)
            traefik = self.run(self.commands.traefik_container()).split()[0]
            for container in self._containers():
                addresses = self.run(self.commands.addresses(container)).split()
                self.run(self.commands.drain(container, addresses, traefik))
                self.run(self.commands.stop(container))
                self.run(self.commands.start(container))
                self._wait(partial(self._healthy, container), 120, f"{container} healthy")
                self._hold(10)  # two Traefik health-check intervals before the next replica goes
            self._hold(self.steady_s)
        finally:
            self._finish(result, load, before)
        if load is not None:
            result.check(result.figures["failed"] == 0, "failed", f"{result.figures['failed']} requests failed")
        return result

    def db_restart(self) -> DrillResult:
        result = DrillResult("db-restart", "compose", "operator")
        before = self._visits()
        load = self._load("db-restart")
        try:
            self._hold(self.steady_s)
            self.run(self.commands.stop_service("postgres"))
            self._hold(self.db_down_s)
            self.run(self.commands.start_service("postgres"))
            result.figures["visits_readable_after_start_s"] = self._wait(
                lambda: self._visits() >= 0, 60, "postgres answering"
            )
            self._hold(self.steady_s)
        finally:
            self._finish(result, load, before)
        if load is not None:
            statuses = set(result.figures["statuses"])
            result.check(statuses <= {200, 503}, "status", f"statuses other than 200/503: {sorted(statuses)}")
            result.check(503 in statuses, "outage-unseen", "no 503 while the database was down")
            last = result.figures["last_statuses"]
            result.check(set(last) == {200}, "not-recovered", f"last answers after the restart: {last}")
        return result

    def conn_exhaustion(self, max_connections: int = 6, replicas: int = 3) -> DrillResult:
        """PostgreSQL recreated with a tiny max_connections (POSTGRES_MAX_CONNECTIONS, read by
        compose/postgres.yaml) and more app replicas than usual: their pools want far more. From one
        client address Traefik's rate limit caps the concurrency, hence the small limit."""
        result = DrillResult("conn-exhaustion", "compose", "operator")
        original = len(self._containers())
        result.figures.update(max_connections=max_connections, replicas=replicas)
        before = self._visits()
        self.run(self.commands.recreate_postgres(max_connections))
        self.run(self.commands.scale_app(replicas))
        restarts_before = self._restarts()
        load = self._load("conn-exhaustion")
        try:
            self._hold(self.steady_s)
        finally:
            if load is not None:
                load.stop()
            logs = self.run(self.commands.app_logs("10m"))
            result.figures["database_unavailable_log_lines"] = logs.count("database unavailable")
            result.figures["container_restarts"] = self._restarts() - restarts_before
            # Back to the configured limit (a database restart) and the usual replica count.
            self.run(self.commands.recreate_postgres(None))
            self.run(self.commands.scale_app(original))
        result.figures["visits_counted"] = self._visits() - before
        result.check(result.figures["container_restarts"] == 0, "restarts", "app containers restarted (crash loop)")
        if load is not None:
            result.check(result.figures["database_unavailable_log_lines"] > 0, "log-line", "exhaustion not reached")
        return result

    def _restarts(self) -> int:
        counts = [self.run(self.commands.health(c)).split()[1:2] for c in self._containers()]
        return sum(int(c[0]) for c in counts if c)

    def bad_input(self) -> DrillResult:
        result = DrillResult("bad-input", "compose", "operator")
        before_visitors = int(self.run(self.commands.psql("SELECT count(*) FROM visitors")).strip() or 0)
        host, port, tls = _endpoint(self.base_url, self.insecure)
        cases = badinput.corpus(self.bad_requests, seed="compose")
        if self.dry_run:
            print(f"+ {len(cases)} raw requests to {host}:{port} ({'TLS' if tls else 'plain'})")
            return result
        summary = badinput.summarise(badinput.send_all(host, port, cases, tls=tls, server_name="localhost"))
        added = int(self.run(self.commands.psql("SELECT count(*) FROM visitors")).strip() or 0) - before_visitors
        # Traefik's own 500 for an unreadable body is reported; 501 to an unknown transfer coding and 505 to an
        # HTTP version it does not speak are what RFC 9112 asks of a server, not failures.
        others = summary.server_errors_through_traefik()
        result.figures.update(
            statuses=summary.statuses,
            visitors_added=added,
            visit_pages=summary.visit_pages,
            traefik_500_unreadable_body=len(summary.traefik_unreadable_body),
            protocol_5xx_answers=len(summary.protocol_answers),
        )
        result.check(not others, "5xx", f"5xx answers: {others[:5]}")
        result.check(not summary.timeouts, "timeout", f"no answer within the client timeout: {summary.timeouts[:5]}")
        result.check(added <= 1, "forged-visitors", f"{added} visitors added from one client address")
        return result

    def by_name(self) -> dict[str, Callable[[], DrillResult]]:
        return {
            "replica-loss": self.replica_loss,
            "graceful-restart": self.graceful_restart,
            "db-restart": self.db_restart,
            "conn-exhaustion": self.conn_exhaustion,
            "bad-input": self.bad_input,
        }


def _endpoint(base_url: str, insecure: bool) -> tuple[str, int, ssl.SSLContext | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    if parts.scheme == "https":
        return parts.hostname or "localhost", parts.port or 443, badinput.tls_context(verify=not insecure)
    return parts.hostname or "localhost", parts.port or 80, None


def plan(actions: Sequence[str], **options: object) -> list[list[str]]:
    """Every command a compose run would execute, in order (``--dry-run``)."""
    runner = DryRunner(echo=bool(options.pop("echo", False)))
    drills = ComposeDrills(run=runner, dry_run=True, **options)  # type: ignore[arg-type]
    for action in actions:
        drills.by_name()[action]()
    return runner.commands
