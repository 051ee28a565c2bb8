"""The five drills against the native stack. Each builds its own stack, runs bounded phases, always
cleans up (``NativeStack.running``), and returns a ``DrillResult`` with its figures and violations.

Phases of steady load are measurement windows, not synchronisation: every wait for a state change
polls with a deadline.
"""

from __future__ import annotations

import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import requests

from harness.procs import child_pids, wait_until
from harness.traefik import health_check_bound_s
from loadtest.background import Load
from loadtest.ledger import LoadResult

from . import badinput
from .native import NativeStack, get_ok
from .report import DrillResult, Ledger, percent


@dataclass(frozen=True)
class Profile:
    """Sizes of one run. ``full`` is ``make drills``; ``short`` is what ``make test`` runs."""

    name: str
    steady_s: float  # steady load before the fault and again after recovery (each)
    users: int
    user_rps: float  # per user: users x user_rps = offered load
    db_down_s: float
    exhaustion_s: float
    bad_requests: int  # per target (direct to gunicorn, through the balancer)

    def with_duration(self, seconds: float | None) -> Profile:
        return self if seconds is None else replace(self, steady_s=seconds, exhaustion_s=max(seconds, 5))


FULL = Profile("full", steady_s=20, users=20, user_rps=5, db_down_s=10, exhaustion_s=30, bad_requests=5000)
SHORT = Profile("short", steady_s=5, users=10, user_rps=5, db_down_s=4, exhaustion_s=10, bad_requests=1000)

MAX_FAILED_PERCENT_REPLICA_LOSS = 0.1
ALERT_DEADLINE_S = 60
APP_RECOVERY_LIMIT_S = 5.0
# Connection exhaustion: 2 replicas x 2 workers x 4 threads = 16 concurrent queries for 6 slots.
EXHAUSTION_MAX_CONNECTIONS = 6
EXHAUSTION_USERS = 40
# Host headers the app's URL map cannot bind (a DNS label over 63 characters); see docs/reliability.md.
BAD_HOST_TAG = "long-host"


def hold(seconds: float, *alive: Callable[[], bool]) -> None:
    """A measurement window of steady load; ends early (and fails) if a process it relies on died."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for check in alive:
            if not check():
                raise AssertionError(f"a process died during a steady-load window ({check})")
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def _load_figures(result: DrillResult, load: LoadResult) -> None:
    total = len(load.requests)
    result.figures.update(
        requests=total,
        failed=load.failed,
        failed_percent=percent(load.failed, total),
        offered_rps=round(load.rate, 1),
        statuses=load.statuses(),
    )


def _ledger(stack: NativeStack, load: LoadResult, visits_before: int) -> Ledger:
    return Ledger(
        ok=load.visit_ok,
        failed=load.visit_failed,
        retried=stack.lb.retries(),
        db_delta=stack.total_visits() - visits_before,
    )


def _check_counters(result: DrillResult, stack: NativeStack) -> None:
    result.check(stack.counters_consistent(), "counters", "total_shards disagree with the visitor rows")


# ---------------------------------------------------------------------------------------- replica loss


def replica_loss(workdir: Path, profile: Profile) -> DrillResult:
    """SIGKILL one of two replicas under load (a crashed container): the balancer's retries hide
    it, the replica alert pages and resolves once the replica is back."""
    result = DrillResult("replica-loss", "native", profile.name)
    with NativeStack.running(workdir, replicas=2, alerting=True) as stack:
        before = stack.total_visits()
        load = Load.start(stack.lb.url, workdir / "load", users=profile.users, user_rps=profile.user_rps, insecure=True)
        try:
            mark = stack.alert_quiet()
            hold(profile.steady_s, load.alive)
            killed_at = time.monotonic()
            stack.replicas[1].stop(signal.SIGKILL)
            down_after = stack.wait_server(1, False, health_check_bound_s() + 5)
            wait_until(
                lambda: stack.alert_after(mark, "firing"), ALERT_DEADLINE_S, 0.25, "replica alert at the webhook"
            )
            fired_after = time.monotonic() - killed_at
            restarted_at = time.monotonic()
            stack.restart(1)
            back_after = stack.wait_server(1, True, health_check_bound_s() + 5)
            wait_until(
                lambda: stack.alert_after(mark, "firing", "resolved"),
                ALERT_DEADLINE_S,
                0.25,
                "replica alert resolved at the webhook",
            )
            resolved_after = time.monotonic() - restarted_at
            hold(profile.steady_s, load.alive)
        finally:
            outcome = load.stop()
        _load_figures(result, outcome)
        result.figures.update(
            lb_marked_down_s=round(down_after, 2),
            alert_fired_after_kill_s=round(fired_after, 2),
            lb_back_in_rotation_s=round(back_after, 2),
            alert_resolved_after_restart_s=round(resolved_after, 2),
        )
        result.add_ledger(_ledger(stack, outcome, before))
        result.check(
            percent(outcome.failed, len(outcome.requests)) <= MAX_FAILED_PERCENT_REPLICA_LOSS,
            "failed-ratio",
            f"{outcome.failed} of {len(outcome.requests)} requests failed (limit {MAX_FAILED_PERCENT_REPLICA_LOSS} %)",
        )
        _check_counters(result, stack)
    return result


# ---------------------------------------------------------------------------------------- graceful restart


def graceful_restart(workdir: Path, profile: Profile) -> DrillResult:
    """Drain and SIGTERM each replica in turn under load and start it again (a rolling restart, as
    scripts/deploy.sh does it)."""
    result = DrillResult("graceful-restart", "native", profile.name)
    with NativeStack.running(workdir, replicas=2) as stack:
        before = stack.total_visits()
        graceful_timeout = float(stack.envs[0].get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
        drain_times, stop_times, rotation_times, exit_codes = [], [], [], []
        load = Load.start(stack.lb.url, workdir / "load", users=profile.users, user_rps=profile.user_rps, insecure=True)
        try:
            hold(profile.steady_s, load.alive)
            for index in range(len(stack.replicas)):
                drain_times.append(round(stack.drain(index, health_check_bound_s() + 5), 2))
                started = time.monotonic()
                exit_codes.append(stack.replicas[index].stop(signal.SIGTERM, timeout=graceful_timeout + 10))
                stop_times.append(round(time.monotonic() - started, 2))
                stack.restart(index)
                rotation_times.append(round(stack.wait_server(index, True, health_check_bound_s() + 5), 2))
                hold(profile.steady_s / 2, load.alive)
            hold(profile.steady_s / 2, load.alive)
        finally:
            outcome = load.stop()
        _load_figures(result, outcome)
        result.figures.update(
            drained_s=drain_times,
            replica_stop_s=stop_times,
            back_in_rotation_s=rotation_times,
            gunicorn_exit_codes=exit_codes,
        )
        result.add_ledger(_ledger(stack, outcome, before))
        result.check(outcome.failed == 0, "failed", f"{outcome.failed} requests failed during the rolling restart")
        result.check(
            all(code == 0 for code in exit_codes),
            "exit-code",
            f"gunicorn did not exit cleanly on SIGTERM: {exit_codes}",
        )
        result.check(
            all(t < graceful_timeout for t in stop_times),
            "stop-time",
            f"a replica needed the whole graceful timeout: {stop_times}",
        )
        _check_counters(result, stack)
    return result


# ---------------------------------------------------------------------------------------- database restart


class Prober:
    """Polls one URL every 50 ms from a thread; remembers the first success after ``arm``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.armed_at: float | None = None
        self.first_ok: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def arm(self) -> None:
        self.first_ok = None
        self.armed_at = time.time()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            if self.armed_at is None or self.first_ok is not None:
                continue
            started = time.time()
            if get_ok(self.url, timeout=5) and self.armed_at is not None and started >= self.armed_at:
                self.first_ok = started

    def recovered_after(self) -> float | None:
        if self.first_ok is None or self.armed_at is None:
            return None
        return self.first_ok - self.armed_at


def db_restart(workdir: Path, profile: Profile) -> DrillResult:
    """Stop PostgreSQL under load (fast shutdown, as `docker compose stop postgres` does: the image's
    stop signal is SIGINT) and start it again after ``db_down_s``."""
    result = DrillResult("db-restart", "native", profile.name)
    with NativeStack.running(workdir, replicas=2) as stack:
        env = stack.envs[0]
        # Longest an answer may take while the database is away: waiting for a pooled connection,
        # then the connect attempt (pre-ping reconnect), plus a second of scheduling slack.
        hang_limit = float(env.get("DB_POOL_TIMEOUT", "3")) + float(env.get("DB_CONNECT_TIMEOUT", "2")) + 1
        lb_limit = health_check_bound_s() + 1
        before = stack.total_visits()
        load = Load.start(stack.lb.url, workdir / "load", users=profile.users, user_rps=profile.user_rps, insecure=True)
        # /api/stats reads the database and counts nothing: the user-visible recovery, without
        # adding visits the ledger cannot see. Direct: the app's recovery; through Traefik: the stack's.
        with Prober(stack.replicas[0].url + "/api/stats") as app_probe, Prober(stack.lb.url + "/api/stats") as lb_probe:
            try:
                hold(profile.steady_s, load.alive)
                stopping_at = time.time()
                stack.pg.stop("fast")
                down_at = time.time()
                hold(profile.db_down_s, load.alive)
                starting_at = time.time()
                stack.pg.start()
                up_at = time.time()
                app_probe.arm()
                lb_probe.arm()
                wait_until(lambda: lb_probe.first_ok is not None, lb_limit + 10, 0.05, "service back through Traefik")
                wait_until(lambda: app_probe.first_ok is not None, 10, 0.05, "app answering again")
                hold(profile.steady_s, load.alive)
            finally:
                outcome = load.stop()
        visits = outcome.visits
        during = [r for r in visits if r.start >= down_at and r.end <= starting_at]
        overlapping = [r for r in visits if r.end >= stopping_at and r.start <= up_at]
        not_503 = [r for r in during if r.status != 503]
        bad_status = [r for r in visits if r.status not in (200, 503)]
        fake_ok = [r for r in visits if r.status == 200 and not r.ok]
        slowest = max((r.latency_ms for r in overlapping), default=0.0) / 1000
        app_recovery = app_probe.recovered_after()
        lb_recovery = lb_probe.recovered_after()
        _load_figures(result, outcome)
        result.figures.update(
            db_down_s=round(starting_at - down_at, 2),
            db_stop_s=round(down_at - stopping_at, 2),
            db_start_s=round(up_at - starting_at, 2),
            visits_while_down=len(during),
            visits_503_while_down=len(during) - len(not_503),
            slowest_response_around_outage_s=round(slowest, 3),
            hang_limit_s=hang_limit,
            app_back_after_db_s=round(app_recovery, 2) if app_recovery is not None else None,
            lb_back_after_db_s=round(lb_recovery, 2) if lb_recovery is not None else None,
        )
        result.add_ledger(_ledger(stack, outcome, before))
        result.check(
            len(during) > 0, "outage-exercised", "no visit was attempted while the database was down (load too low?)"
        )
        result.check(not not_503, "not-503", f"{len(not_503)} visits while the database was down were not 503")
        result.check(not bad_status, "status", f"statuses other than 200/503: {sorted({r.status for r in bad_status})}")
        result.check(not fake_ok, "fake-200", f"{len(fake_ok)} responses were 200 without the visit line")
        # Timings are targets, reported: a busy machine makes them slower without anything being wrong.
        # Behaviour is checked above and by the deadlines waited for (recovery within them, no answer
        # later than the load generator's network timeout: that would be a status 0).
        result.timing(
            slowest <= hang_limit, "hang", f"a response took {slowest:.1f}s around the outage (target {hang_limit}s)"
        )
        result.timing(
            app_recovery is not None and app_recovery <= APP_RECOVERY_LIMIT_S,
            "app-recovery",
            f"the app answered {app_recovery}s after the database was back (target {APP_RECOVERY_LIMIT_S}s)",
        )
        result.timing(
            lb_recovery is not None and lb_recovery <= lb_limit,
            "lb-recovery",
            f"the balancer routed again {lb_recovery}s after the database (target: one health-check "
            f"interval + timeout + 1s = {lb_limit}s)",
        )
        _check_counters(result, stack)
    return result


# ---------------------------------------------------------------------------------------- connection exhaustion


def conn_exhaustion(workdir: Path, profile: Profile, pool_env: dict[str, str] | None = None) -> DrillResult:
    """More replicas x workers x pool than PostgreSQL's max_connections, under a burst of load.

    ``pool_env`` overrides the pool settings (DB_POOL_SIZE, DB_MAX_OVERFLOW); default: production's."""
    name = "conn-exhaustion" + ("" if not pool_env else " (" + ", ".join(f"{k}={v}" for k, v in pool_env.items()) + ")")
    result = DrillResult(name, "native", profile.name)
    with NativeStack.running(workdir, replicas=2, max_connections=EXHAUSTION_MAX_CONNECTIONS, env=pool_env) as stack:
        env = stack.envs[0]
        workers = int(env.get("WEB_CONCURRENCY", "2"))
        demand = (
            len(stack.replicas) * workers * (int(env.get("DB_POOL_SIZE", "4")) + int(env.get("DB_MAX_OVERFLOW", "2")))
        )
        masters = [r.process.pid for r in stack.replicas]
        workers_before = [child_pids(pid) for pid in masters]
        boots_before = stack.logs().count("Booting worker")
        before = stack.total_visits()
        load = Load.start(stack.lb.url, workdir / "load", users=EXHAUSTION_USERS, user_rps="max", insecure=True)
        try:
            hold(profile.exhaustion_s, load.alive, *[lambda r=r: r.process.poll() is None for r in stack.replicas])
        finally:
            outcome = load.stop()
        dropped_at = time.monotonic()
        # Recovery: once the burst is over, every replica serves visits again (direct, so each one
        # is checked), and keeps doing so for a burst of sequential requests.
        recovered = []
        for replica in stack.replicas:
            url = replica.url + "/"
            wait_until(partial(get_ok, url), 30, 0.2, f"replica {replica.url} serving again")
            recovered.append(round(time.monotonic() - dropped_at, 2))
        sequential = [requests.get(r.url + "/", timeout=10).status_code for r in stack.replicas for _ in range(20)]
        logs = stack.logs()
        unavailable_lines = logs.count('"message": "database unavailable"')
        too_many = logs.count("too many clients")
        workers_after = [child_pids(pid) for pid in masters]
        masters_alive = all(r.process.poll() is None for r in stack.replicas)
        # Idle pools keep every slot the database has, so the drill's own query could not get in:
        # stop the replicas (gracefully, as a deploy would) before reading the counts.
        for replica in stack.replicas:
            replica.stop(signal.SIGTERM)
        _load_figures(result, outcome)
        result.figures.update(
            max_connections=EXHAUSTION_MAX_CONNECTIONS,
            pool_demand=demand,
            database_unavailable_log_lines=unavailable_lines,
            too_many_clients_errors=too_many,
            masters_alive=masters_alive,
            worker_boots_during_drill=stack.logs().count("Booting worker") - boots_before,
            recovered_after_load_s=recovered,
            sequential_after_recovery=f"{sequential.count(200)}/{len(sequential)} ok",
        )
        # Visits only count through the load generator's ledger; the recovery requests above add
        # exactly one visit each (all 200, checked below).
        ledger = _ledger(stack, outcome, before)
        direct = sequential.count(200) + len(stack.replicas)
        result.add_ledger(replace(ledger, db_delta=ledger.db_delta - direct))
        result.check(
            demand > EXHAUSTION_MAX_CONNECTIONS,
            "exhaustion-config",
            "the pools fit: this drill did not exhaust anything",
        )
        result.check(
            too_many > 0, "exhaustion-reached", "PostgreSQL never refused a connection: exhaustion was not reached"
        )
        result.check(unavailable_lines > 0, "log-line", 'no "database unavailable" log line')
        statuses = outcome.statuses()
        result.check(set(statuses) <= {200, 503}, "status", f"statuses other than 200/503: {statuses}")
        result.check(
            [r.process.pid for r in stack.replicas] == masters and masters_alive,
            "master",
            "a gunicorn master died or was replaced",
        )
        result.check(
            workers_after == workers_before, "workers", f"workers were replaced: {workers_before} -> {workers_after}"
        )
        result.check(sequential.count(200) == len(sequential), "recovery", f"after the burst: {sequential}")
        _check_counters(result, stack)
    return result


# ---------------------------------------------------------------------------------------- bad input


def bad_input(workdir: Path, profile: Profile) -> DrillResult:
    """Forged, malformed and oversized requests at volume, straight at gunicorn (which trusts one
    proxy hop, as in compose) and through Traefik over TLS (what the stack's clients reach)."""
    result = DrillResult("bad-input", "native", profile.name)
    with NativeStack.running(workdir, replicas=2) as stack:
        phases: dict[str, tuple[int, int, ssl.SSLContext | None]] = {
            "direct": (stack.replicas[0].port, badinput.DIRECT_VISITOR_BOUND, None),
            "via_lb": (stack.lb.ports["websecure"], 1, badinput.tls_context(verify=False)),
        }
        for phase, (port, visitor_bound, tls) in phases.items():
            visitors_before, visits_before = stack.total_visitors(), stack.total_visits()
            corpus = badinput.corpus(profile.bad_requests, seed=phase)
            started = time.monotonic()
            outcomes = badinput.send_all("127.0.0.1", port, corpus, tls=tls, server_name="localhost")
            elapsed = time.monotonic() - started
            summary = badinput.summarise(outcomes)
            visitors_added = stack.total_visitors() - visitors_before
            visits_added = stack.total_visits() - visits_before
            result.figures[f"{phase}_requests"] = len(outcomes)
            result.figures[f"{phase}_rps"] = round(len(outcomes) / elapsed, 1)
            result.figures[f"{phase}_statuses"] = summary.statuses
            result.figures[f"{phase}_visitors_added"] = visitors_added
            result.figures[f"{phase}_visit_pages"] = summary.visit_pages
            result.figures[f"{phase}_visits_added"] = visits_added
            errors = summary.server_errors
            if tls is not None:
                result.figures[f"{phase}_traefik_500_unreadable_body"] = len(summary.traefik_unreadable_body)
                result.figures[f"{phase}_protocol_5xx_answers"] = len(summary.protocol_answers)
                errors = summary.server_errors_through_traefik()
            bad_host = [e for e in errors if e.startswith(BAD_HOST_TAG)]
            others = [e for e in errors if not e.startswith(BAD_HOST_TAG)]
            result.check(not others, "5xx", f"{phase}: 5xx answers: {others[:5]}")
            result.check(not bad_host, "5xx-bad-host", f"{phase}: 5xx answers to an invalid Host: {bad_host[:3]}")
            result.check(
                not summary.timeouts, "timeout", f"{phase}: no answer within the client timeout: {summary.timeouts[:5]}"
            )
            result.check(
                visitors_added <= visitor_bound,
                "forged-visitors",
                f"{phase}: {visitors_added} visitors added, at most {visitor_bound} real or canonical addresses",
            )
            result.check(
                visits_added == summary.visit_pages,
                "visit-count",
                f"{phase}: {visits_added} visits counted for {summary.visit_pages} visit pages served",
            )
            if phase == "direct":
                result.check(
                    not summary.accepted_invalid_xff,
                    "invalid-xff",
                    f"invalid X-Forwarded-For answered 200: {summary.accepted_invalid_xff[:5]}",
                )
        result.check(all(r.process.poll() is None for r in stack.replicas), "replica-died", "a replica died")
        _check_counters(result, stack)
    return result


DRILLS: dict[str, Callable[[Path, Profile], DrillResult]] = {
    "replica-loss": replica_loss,
    "graceful-restart": graceful_restart,
    "db-restart": db_restart,
    "conn-exhaustion": conn_exhaustion,
    "bad-input": bad_input,
}
