"""`make bench`: GET / (returning and new visitors), a hello-world Flask route and the bare database
upsert, side by side in one run, at 1 k and 1 M visitors (more with --sizes).

    .venv/bin/python -m bench.run [--sizes 1000,1000000] [--rounds 3] [--duration 10] [--output PATH]

What it starts (all on 127.0.0.1, all stopped by PID at the end):
- PostgreSQL 15 in a temporary directory, configured as compose/postgres.yaml runs it (durable
  commits, shared_buffers 256MB, max_connections 100; the test fixture turns durability off for speed).
- The app under the production gunicorn.conf.py with TRUSTED_PROXY_HOPS=1, so the generator can
  play new visitors through X-Forwarded-For.
- The same gunicorn.conf.py serving bench/hello.py: the framework ceiling; and serving bench/floor.py:
  hello-world plus the app's visit statement and nothing else, the floor any Flask visit pays here.

What it measures for each size, ``--rounds`` times, interleaved (hello, floor, returning, new, pgbench
returning, pgbench new, then again), so that one noisy moment cannot decide a ratio:
- max throughput with wrk (closed loop, ``--connections`` connections, one wrk thread, the visitor
  scripts in loadtest/wrk/);
- latency at a fixed 80 % of that throughput with loadtest/openloop.py (open loop, latency counted
  from each request's scheduled time, so queueing is not hidden);
- pgbench with the app's own visit statement (``app.counting.postgres_visit_sql``), prepared as the
  app prepares it, for returning and new visitors: the database ceiling.
- the composite ceiling per round, ``1 / (1 / hello + 1 / pgbench)``: what a visit would cost if the
  app added nothing to a hello-world route and the database's work. ``new/composite`` and
  ``returning/composite`` are reported as the median of the rounds with their min-max spread, and so
  are ``floor/composite`` (the floor against the same composite as new visitors) and ``new/floor`` (what
  the app's additions around the statement cost).
- CPU seconds used by the app, PostgreSQL and the load generator, and what the app's database
  sessions were waiting on (pg_stat_activity samples): where it saturates.

Everything shares the same cores, the load generators included; the docs say so next to the figures.
How noisy the machine was: its load before the start, the CPU used by other tenants during each
measurement ("other"), and the spread of each figure over the rounds.
Writes a Markdown table to stdout and JSON to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from app.counting import postgres_visit_sql  # the exact statement the app runs
from app.models import COUNTER_SHARDS
from app.seed import seed_visitors
from harness.gunicorn import base_env, migrate, run_gunicorn
from harness.postgres import PostgresServer
from harness.tools import MissingTool, find_tool
from loadtest import WRK_SCRIPTS, openloop

BENCH = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH / "results" / "latest.json"
DEFAULT_SIZES = (1_000, 1_000_000)
# As compose/postgres.yaml runs it. The test fixture turns durability off for speed; a benchmark must not.
PRODUCTION_SETTINGS = ("fsync=on", "synchronous_commit=on", "full_page_writes=on", "shared_buffers=256MB")
PRODUCTION_MAX_CONNECTIONS = 100
RETURNING_POOL = 1000
TARGETS = {"visit_vs_composite": 0.8, "large_vs_small": 0.90, "p99_at_80pct_ms": 50.0}
LOAD_FRACTION = 0.8
MAX_ATTEMPTS = 3
BALANCED = 0.5
ROUND_KINDS = ("hello", "floor", "returning", "new", "pgbench_returning", "pgbench_new")


# --------------------------------------------------------------------------------------------- tools


def need(tool: str, hint: str) -> str:
    """The tool, or one line and exit status 1 (a command-line tool, not a test)."""
    try:
        return find_tool(tool, hint)
    except MissingTool as exc:
        raise SystemExit(f"bench: {exc}") from None


def run_measured(command: list[str], timeout: float) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run a load generator and return its output and the CPU seconds it used (from wait4)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                process.kill()
                pid, status, usage = os.wait4(process.pid, 0)
                break
            time.sleep(0.05)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(command, process.returncode, out.read(), err.read())
    return result, usage.ru_utime + usage.ru_stime


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _wrk_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unparseable wrk duration {text!r}")
    return float(match[1]) * _WRK_UNITS[match[2]]


def wrk(url: str, script: Path, duration: float, connections: int) -> dict[str, Any]:
    command = [
        need("wrk", "apt install wrk"),
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    result, cpu = run_measured(command, timeout=duration + 60)
    out = result.stdout
    if result.returncode != 0 or "Requests/sec" not in out:
        raise RuntimeError(f"wrk failed ({result.returncode}): {out}\n{result.stderr}")
    latency = dict(re.findall(r"^\s*(50|75|90|99)%\s+(\S+)\s*$", out, re.MULTILINE))
    if not {"50", "90", "99"} <= latency.keys():
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}\n{result.stderr}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "requests": int(re.search(r"(\d+) requests in", out)[1]),  # type: ignore[index]
        "p50_ms": round(_wrk_ms(latency["50"]), 2),
        "p90_ms": round(_wrk_ms(latency["90"]), 2),
        "p99_ms": round(_wrk_ms(latency["99"]), 2),
        "non_2xx": int(non_2xx[1]) if non_2xx else 0,
        "socket_errors": sum(int(v) for v in socket_errors.groups()) if socket_errors else 0,
        "generator_cpu_s": round(cpu, 2),
    }


# ---------------------------------------------------------------------------------- observation


class Observer:
    """Samples, in a thread, the CPU time of process trees and what the app's DB sessions wait on."""

    def __init__(self, roots: dict[str, int], dsn: str, interval: float = 0.25) -> None:
        self.roots, self.dsn, self.interval = roots, dsn, interval
        self.cpu: dict[str, dict[int, float]] = {name: {} for name in roots}
        self.base: dict[str, dict[int, float]] = {name: {} for name in roots}
        self.waits: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _tree_cpu(self, pid: int) -> dict[int, float]:
        found: dict[int, float] = {}
        try:
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                try:
                    times = process.cpu_times()
                    found[process.pid] = times.user + times.system
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return found

    def _sample_cpu(self, into: dict[str, dict[int, float]]) -> None:
        for name, pid in self.roots.items():
            into[name].update(self._tree_cpu(pid))

    def _loop(self) -> None:
        connection = psycopg2.connect(self.dsn)
        connection.autocommit = True
        try:
            while not self._stop.wait(self.interval):
                self._sample_cpu(self.cpu)
                with connection.cursor() as cursor:
                    cursor.execute(
                        "SELECT state, coalesce(wait_event_type || ':' || wait_event, 'CPU') FROM pg_stat_activity"
                        " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
                        " AND application_name IN ('tally', 'pgbench')"
                    )
                    for state, wait in cursor.fetchall():
                        self.waits[f"{state} {wait}"] += 1
                self.samples += 1
        finally:
            connection.close()

    def __enter__(self) -> Observer:
        # gunicorn workers (the masters' direct children): keep-alive connections stay with the worker
        # that accepted them, so the split between workers explains runs that stop short of the CPU.
        self.workers: dict[str, list[int]] = {}
        for name in ("app", "hello", "floor"):
            try:
                self.workers[name] = [child.pid for child in psutil.Process(self.roots[name]).children()]
            except (KeyError, psutil.Error):
                continue
        self._sample_cpu(self.base)
        self.started = time.monotonic()
        self.busy0 = psutil.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_cpu(self.cpu)
        self.elapsed = time.monotonic() - self.started
        busy1 = psutil.cpu_times()
        idle = (busy1.idle - self.busy0.idle) + (busy1.iowait - self.busy0.iowait)
        total = sum(busy1) - sum(self.busy0)
        self.busy_pct = round(100 * psutil.cpu_count() * (1 - idle / total), 1) if total else 0.0

    def report(self) -> dict[str, Any]:
        cpu = {}
        for name in self.roots:
            used = sum(value - self.base[name].get(pid, 0.0) for pid, value in self.cpu[name].items())
            cpu[name] = round(100 * used / self.elapsed, 1)
        samples = max(self.samples, 1)
        waits = {key: round(count / samples, 2) for key, count in self.waits.most_common(6)}
        workers = {
            name: [
                round(100 * (self.cpu[name].get(pid, 0.0) - self.base[name].get(pid, 0.0)) / self.elapsed, 1)
                for pid in pids
            ]
            for name, pids in self.workers.items()
        }
        return {"cpu_pct": cpu, "worker_cpu_pct": workers, "machine_busy_pct": self.busy_pct, "db_sessions_avg": waits}


# ------------------------------------------------------------------------------------- database


def seed(pg: PostgresServer, database: str, current: int, target: int) -> float:
    """Add visitors ``current+1 .. target`` with the app's seeder, then settle the table. Returns seconds."""
    if target <= current:
        return 0.0
    started = time.monotonic()
    seed_visitors(pg.url(database), target - current, offset=current)
    connection = psycopg2.connect(pg.dsn(database))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM (ANALYZE) visitors")
            cursor.execute("CHECKPOINT")
    finally:
        connection.close()
    return round(time.monotonic() - started, 1)


def check_invariants(pg: PostgresServer, database: str) -> dict[str, Any]:
    rows = pg.execute(
        "SELECT (SELECT count(*) FROM visitors), (SELECT sum(visitors) FROM total_shards),"
        " (SELECT sum(visits) FROM visitors), (SELECT sum(visits) FROM total_shards),"
        " pg_total_relation_size('visitors')",
        database,
    )
    count, shard_visitors, visits, shard_visits, size = rows[0]
    return {
        "visitors": _integer(count),
        "consistent": count == shard_visitors and visits == shard_visits,
        "visitors_table_mb": round(_integer(size) / 2**20),
    }


def pgbench_script(kind: str) -> str:
    """The app's visit statement with the key computed in SQL: the database does exactly the app's work."""
    new_key = "sha256(convert_to(gen_random_uuid()::text, 'UTF8'))"
    key = {
        "returning": "sha256(convert_to('pgbench-returning-' || :n, 'UTF8'))",
        "new": new_key,
        # Every writer on shard 0: what one hot counter row would cost, next to the sharded "new".
        "new_one_shard": new_key,
    }[kind]
    shard = "0" if kind == "new_one_shard" else f"random(0, {COUNTER_SHARDS - 1})"
    sql = postgres_visit_sql(key=key, today="(now() AT TIME ZONE 'UTC')::date", shard=":shard")
    return f"\\set n random(1, {RETURNING_POOL})\n\\set shard {shard}\n{sql.strip()};\n"


def pgbench(pg: PostgresServer, database: str, kind: str, clients: int, duration: float, work: Path) -> dict[str, Any]:
    script = work / f"visit-{kind}.sql"
    script.write_text(pgbench_script(kind))
    logs = work / f"pgbench-{kind}-{time.monotonic_ns()}"
    logs.mkdir()
    command = [
        str(pg.bin_dir / "pgbench"),
        "-n",
        "-h",
        "127.0.0.1",
        "-p",
        str(pg.port),
        "-U",
        "postgres",
        "-c",
        str(clients),
        "-j",
        "1",
        "-T",
        f"{duration:g}",
        # As the app runs it: a server-side prepared statement (app/counting.py), parsed and planned once.
        "-M",
        "prepared",
        "-f",
        str(script),
        "-l",
        f"--log-prefix={logs / 'tx'}",
        database,
    ]
    result, cpu = run_measured(command, timeout=duration + 60)
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed: {result.stdout}\n{result.stderr}")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    latencies: list[float] = []
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            fields = line.split()
            latencies.append(int(fields[2]) / 1000)
    latencies.sort()
    shutil.rmtree(logs)
    return {
        "rps": float(tps[1]) if tps else 0.0,
        "requests": len(latencies),
        "p50_ms": round(openloop.percentile(latencies, 0.50), 2),
        "p90_ms": round(openloop.percentile(latencies, 0.90), 2),
        "p99_ms": round(openloop.percentile(latencies, 0.99), 2),
        "failed": int(failed[1]) if failed else 0,
        "generator_cpu_s": round(cpu, 2),
    }


# ------------------------------------------------------------------------------------- servers


# WSGI callable and the path that says it is up; the floor's "/" would count a visit.
REFERENCE_APPS = {"hello": ("bench.hello:app", "/"), "floor": ("bench.floor:app", "/healthz")}


@contextmanager
def scratch_postgres(prefix: str) -> Iterator[tuple[PostgresServer, Path]]:
    """PostgreSQL configured as in production and a work directory, both gone afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    pg = PostgresServer.create(max_connections=PRODUCTION_MAX_CONNECTIONS, extra_settings=PRODUCTION_SETTINGS)
    try:
        yield pg, work
    finally:
        pg.destroy()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def reference_server(
    name: str, env: dict[str, str], work: Path, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """bench/hello.py or bench/floor.py under the same gunicorn.conf.py: only the WSGI callable differs from
    the app's server."""
    # gunicorn.conf.py wipes the multiprocess directory at start: it must not be the app's.
    env = env | {"PORT": "", "METRICS_PORT": "", "PROMETHEUS_MULTIPROC_DIR": str(work / f"{name}-multiproc")}
    wsgi_app, ready_path = REFERENCE_APPS[name]
    server = run_gunicorn(env, work / f"{name}.log", wsgi_app=wsgi_app, ready_path=ready_path, extra_args=extra_args)
    try:
        yield server.url, server.process.pid
    finally:
        server.stop()


def visits_recorded(pg: PostgresServer, database: str) -> int:
    return _integer(pg.execute("SELECT sum(visits) FROM total_shards", database)[0][0])


def _integer(value: object) -> int:
    """A count or size from PostgreSQL: bigint comes back as int, sum() over bigint as Decimal."""
    if not isinstance(value, int | Decimal):
        raise TypeError(f"expected an integer from PostgreSQL, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------- benchmark


def measure_max(
    name: str,
    url: str,
    script: Path,
    args: argparse.Namespace,
    observer_roots: dict[str, int],
    dsn: str,
    count_visits: Any = None,
    server: str = "app",
) -> dict[str, Any]:
    try:
        wrk(url, script, args.warmup, args.connections)
    except RuntimeError as exc:
        # A warm-up only has to send traffic; its figures are thrown away.
        print(f"  (warm-up: {str(exc).splitlines()[0]})", file=sys.stderr, flush=True)
    # wrk opens its connections in one burst and gunicorn workers race to accept them; keep-alive
    # connections then stay put, so one worker may get all of them while the other idles. Such a run
    # measures one worker, not the server: retry (fresh connections) until the split is even, at most
    # 3 times, keep the most even attempt, and record every attempt.
    attempts: list[dict[str, Any]] = []
    for _ in range(MAX_ATTEMPTS):
        before = count_visits() if count_visits else 0
        with Observer(observer_roots, dsn) as observer:
            attempt = wrk(url, script, args.duration, args.connections)
        attempt |= observer.report()
        if count_visits:
            # A benchmark of error pages would flatter us: every wrk response must have been a counted visit.
            attempt["visits_recorded"] = count_visits() - before
        attempt["worker_balance"] = worker_balance(attempt["worker_cpu_pct"].get(server, []))
        attempts.append(attempt)
        if attempt["worker_balance"] >= BALANCED:
            break
    peak = max(attempts, key=lambda a: (a["worker_balance"] >= BALANCED, a["worker_balance"]))
    peak["attempts"] = [{"rps": a["rps"], "worker_cpu_pct": a["worker_cpu_pct"].get(server)} for a in attempts]
    peak["other_cpu_pct"] = _other_cpu(peak, args.duration)
    _cpu_cost(peak, args.duration)
    print(
        f"  {name:<22} max {peak['rps']:8.1f} req/s p50 {peak['p50_ms']:6.2f} p99 {peak['p99_ms']:7.2f} ms"
        f"  other CPU {peak['other_cpu_pct']:g} %",
        file=sys.stderr,
        flush=True,
    )
    return peak


def measure_at_rate(
    name: str, url: str, rate: float, headers: Any, args: argparse.Namespace, observer_roots: dict[str, int], dsn: str
) -> dict[str, Any]:
    """Latency at a fixed rate (open loop): what a visitor waits when the server is busy but not saturated."""
    host, port = url.removeprefix("http://").split(":")
    with Observer(observer_roots, dsn) as observer:
        started = time.process_time()
        steady = openloop.run(host, int(port), rate, args.duration, connections=args.open_connections, headers=headers)
        generator_cpu = time.process_time() - started
    at_rate = asdict(steady) | observer.report() | {"generator_cpu_s": round(generator_cpu, 2)}
    at_rate["other_cpu_pct"] = _other_cpu(at_rate, args.duration)
    print(
        f"  {name:<22} at {rate:7.1f} req/s: p50 {at_rate['p50_ms']:6.2f} p99 {at_rate['p99_ms']:7.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return at_rate


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min and max over the rounds, and (max - min) / median in percent."""
    mid = median(values)
    return {
        "median": round(mid, 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "spread_pct": round(100 * (max(values) - min(values)) / mid, 1) if mid else 0.0,
        "rounds": [round(v, 3) for v in values],
    }


def composite(hello_rps: float, db_tps: float) -> float:
    """What a visit would allow if the app added nothing to a hello-world route and the database's work."""
    return 1 / (1 / hello_rps + 1 / db_tps) if hello_rps and db_tps else 0.0


def summarise_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    # Runs recorded before the floor existed have no "floor".
    kinds = [kind for kind in ROUND_KINDS if all(kind in r for r in rounds)]
    for kind in kinds:
        summary[f"{kind}_rps"] = spread([r[kind]["rps"] for r in rounds])
        summary[f"{kind}_other_cpu_pct"] = spread([r[kind].get("other_cpu_pct", 0.0) for r in rounds])
    for kind in ("returning", "new", "floor"):
        if kind not in kinds:
            continue
        # The floor plays new visitors: its database work is the new visitors' statement.
        database = "pgbench_returning" if kind == "returning" else "pgbench_new"
        composites = [composite(r["hello"]["rps"], r[database]["rps"]) for r in rounds]
        summary[f"{kind}_composite_rps"] = spread(composites)
        summary[f"{kind}_vs_composite"] = spread(
            [r[kind]["rps"] / c if c else 0.0 for r, c in zip(rounds, composites, strict=True)]
        )
        summary[f"{kind}_vs_hello"] = spread([r[kind]["rps"] / r["hello"]["rps"] for r in rounds])
    if "floor" in kinds:
        # What the app adds around the statement costs the route this share of the floor's throughput.
        summary["new_vs_floor"] = spread([r["new"]["rps"] / r["floor"]["rps"] for r in rounds])
    return summary


def representative(rounds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The round whose throughput is the median: its CPU split and latencies go in the table."""
    ordered = sorted(rounds, key=lambda r: float(r[kind]["rps"]))
    chosen: dict[str, Any] = ordered[(len(ordered) - 1) // 2][kind]
    return chosen


def _cpu_cost(result: dict[str, Any], duration: float) -> None:
    """CPU milliseconds per request by component, and the throughput they allow on this machine's cores.

    Other tenants slow a run down but barely change what one request costs, so on a shared machine
    the cost-based ceiling is the steadier figure; it assumes perfect scheduling, so it is an upper bound.
    """
    rps = result["rps"] or 0.0
    if not rps:
        return
    costs = {name: round(pct * 10 / rps, 3) for name, pct in result["cpu_pct"].items() if pct > 0.5}
    costs["generator"] = round(result["generator_cpu_s"] * 1000 / (rps * duration), 3)
    result["cpu_ms_per_request"] = costs
    total = sum(costs.values())
    result["cpu_bound_ceiling_rps"] = round((psutil.cpu_count() or 1) * 1000 / total) if total else None


def worker_balance(split: list[float]) -> float:
    """Least busy worker's CPU over the busiest one's: 1 = even, 0 = one worker did everything."""
    return round(min(split) / max(split), 2) if len(split) >= 2 and max(split) > 0 else 1.0


def _other_cpu(result: dict[str, Any], duration: float) -> float:
    """CPU used by neither the servers nor the generator: other tenants of the machine, i.e. noise."""
    busy: float = result["machine_busy_pct"]
    ours: float = sum(result["cpu_pct"].values()) + 100 * result["generator_cpu_s"] / duration
    return round(max(0.0, busy - ours), 1)


def quiet_check(seconds: float = 3.0) -> float:
    """Machine CPU busy (percent of one core) before we start anything: a benchmark on a busy box lies."""
    busy: float = psutil.cpu_percent(interval=seconds) * (psutil.cpu_count() or 1)
    return round(busy, 1)


def measure_pgbench(
    pg: PostgresServer, database: str, kind: str, args: argparse.Namespace, work: Path, roots: dict[str, int]
) -> dict[str, Any]:
    pgbench(pg, database, kind, args.db_clients, args.warmup, work)
    with Observer(roots, pg.dsn(database)) as observer:
        result = pgbench(pg, database, kind, args.db_clients, args.duration, work)
    result |= observer.report()
    result["other_cpu_pct"] = _other_cpu(result, args.duration)
    _cpu_cost(result, args.duration)
    print(
        f"  {'pgbench ' + kind:<22} max {result['rps']:8.1f} tx/s "
        f" p50 {result['p50_ms']:6.2f} p99 {result['p99_ms']:7.2f} ms",
        file=sys.stderr,
        flush=True,
    )
    return result


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = found[1] if found else ""
    return {
        "cpus": psutil.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def ratios_and_targets(sizes: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ratios: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    for size, data in sizes.items():
        summary = data["summary"]
        for kind in ("returning", "new"):
            ratios[f"{kind}_vs_composite@{size}"] = summary[f"{kind}_vs_composite"]
            # For reference only: the old yardstick, which ignores the database's share of the work.
            ratios[f"{kind}_vs_hello@{size}"] = summary[f"{kind}_vs_hello"]
            ratio = summary[f"{kind}_vs_composite"]["median"]
            targets.append(
                {
                    "target": f"GET / {kind} >= {TARGETS['visit_vs_composite']} x composite ({size} visitors,"
                    " median of rounds)",
                    "value": ratio,
                    "met": ratio >= TARGETS["visit_vs_composite"],
                }
            )
            p99 = data[kind]["at_80pct"]["p99_ms"]
            targets.append(
                {
                    "target": f"GET / {kind} p99 < {TARGETS['p99_at_80pct_ms']:g} ms at 80 % of max ({size} visitors)",
                    "value": p99,
                    "met": p99 < TARGETS["p99_at_80pct_ms"] and data[kind]["at_80pct"]["errors"] == 0,
                }
            )
        for name in ("floor_vs_composite", "floor_vs_hello", "new_vs_floor"):
            if name in summary:
                ratios[f"{name}@{size}"] = summary[name]
        one_shard = data.get("pgbench_new_one_shard", {}).get("rps")
        if one_shard:
            ratios[f"sharded_vs_one_counter_row@{size}"] = round(summary["pgbench_new_rps"]["median"] / one_shard, 3)
    keys = sorted(sizes, key=int)
    if len(keys) >= 2:
        small, large = keys[0], keys[-1]
        for kind in ("returning", "new", "pgbench_returning", "pgbench_new"):
            small_rps = sizes[small]["summary"][f"{kind}_rps"]["median"]
            ratio = round(sizes[large]["summary"][f"{kind}_rps"]["median"] / small_rps, 3) if small_rps else 0.0
            ratios[f"{kind}_{large}_vs_{small}"] = ratio
            if not kind.startswith("pgbench"):
                targets.append(
                    {
                        "target": f"GET / {kind} at {large} >= {TARGETS['large_vs_small']} x at {small} visitors",
                        "value": ratio,
                        "met": ratio >= TARGETS["large_vs_small"],
                    }
                )
    return ratios, targets


def table(report: dict[str, Any]) -> str:
    lines = [
        "| visitors | scenario | max req/s | p50 ms | p99 ms | req/s at 80 % | p50 ms | p99 ms"
        " | CPU % app / db / gen / other | CPU ms/req | CPU-bound ceiling |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for size, data in report["sizes"].items():
        for kind, label in (
            ("hello", "hello-world Flask (fixed rate: GET / new's)"),
            ("floor", "floor: hello-world + visit SQL, new"),
            ("returning", "GET / returning"),
            ("new", "GET / new"),
            ("pgbench_returning", "pgbench visit, returning"),
            ("pgbench_new", "pgbench visit, new"),
            ("pgbench_new_one_shard", "pgbench visit, new, 1 shard"),
        ):
            if kind not in data:
                continue
            result = data[kind]
            peak = result.get("max", result)
            cpu = peak["cpu_pct"]
            server = kind if kind in REFERENCE_APPS else "app"
            app_cpu = cpu.get(server, 0.0) if "max" in result else 0.0
            gen = round(100 * peak["generator_cpu_s"] / report["config"]["duration_s"], 1)
            cpu_text = f"{app_cpu:g} / {cpu.get('postgres', 0.0):g} / {gen:g} / {peak.get('other_cpu_pct', 0.0):g}"
            split = peak.get("worker_cpu_pct", {}).get(server)
            if split and "max" in result:
                cpu_text += " (workers " + " + ".join(f"{value:g}" for value in split) + ")"
            if "at_80pct" in result:
                at = result["at_80pct"]
                steady = f"{at['rate_achieved']:.0f} | {at['p50_ms']:.2f} | {at['p99_ms']:.2f}"
            else:
                steady = "- | - | -"
            lines.append(
                f"| {int(size):,} | {label} | {peak['rps']:.0f} | {peak['p50_ms']:.2f} | {peak['p99_ms']:.2f}"
                f" | {steady} | {cpu_text} | {sum(peak.get('cpu_ms_per_request', {}).values()):.2f}"
                f" | {peak.get('cpu_bound_ceiling_rps') or '-'} |"
            )
    lines.append("")
    lines.append(
        "| visitors | ratio (median of rounds) | median | min – max | composite req/s | spread of req/s"
        " | other CPU % (median) |"
    )
    lines.append("|---:|---|---:|---|---:|---:|---:|")
    for size, data in report["sizes"].items():
        summary = data["summary"]
        for kind in ("new", "returning", "floor"):
            if f"{kind}_vs_composite" not in summary:
                continue
            for base in ("composite", "hello", "floor"):
                if f"{kind}_vs_{base}" not in summary:
                    continue
                ratio = summary[f"{kind}_vs_{base}"]
                ceiling = summary[f"{kind}_composite_rps"]["median"] if base == "composite" else "-"
                lines.append(
                    f"| {int(size):,} | {kind} / {base} | {ratio['median']:.2f}"
                    f" | {ratio['min']:.2f} – {ratio['max']:.2f}"
                    f" | {ceiling if isinstance(ceiling, str) else f'{ceiling:.0f}'}"
                    f" | {summary[f'{kind}_rps']['spread_pct']:g} % | {summary[f'{kind}_other_cpu_pct']['median']:g} |"
                )
    lines.append("")
    lines.append("| target | value | met |")
    lines.append("|---|---:|---|")
    for target in report["targets"]:
        lines.append(f"| {target['target']} | {target['value']} | {'yes' if target['met'] else '**no**'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=os.environ.get("BENCH_SIZES", ",".join(str(s) for s in DEFAULT_SIZES)),
        help="comma-separated visitor counts, ascending (env BENCH_SIZES)",
    )
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", 10)))
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument(
        "--rounds", type=int, default=int(os.environ.get("BENCH_ROUNDS", 3)), help="interleaved repetitions"
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (closed loop)")
    parser.add_argument("--open-connections", type=int, default=64, help="connections of the fixed-rate generator")
    parser.add_argument("--db-clients", type=int, default=8, help="pgbench clients (2 workers x 4 threads)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the tables of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())
    need("wrk", "apt install wrk")

    idle_busy = quiet_check()
    if idle_busy > 20:
        print(
            f"bench: WARNING the machine is already {idle_busy:g} % busy before the benchmark:"
            " figures will be low and noisy",
            file=sys.stderr,
            flush=True,
        )
    with scratch_postgres("tally-bench-") as (pg, work), ExitStack() as servers_to_stop:
        database = "tally"
        url = pg.create_database(database)
        migrated = migrate(url, work)
        if migrated.returncode != 0:
            raise SystemExit(f"bench: migration failed:\n{migrated.stderr}")
        env = base_env(url, work, TRUSTED_PROXY_HOPS="1")
        app = run_gunicorn(env, work / "app.log")
        servers_to_stop.callback(app.stop)
        postmaster = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        version = pg.execute("SHOW server_version")[0][0]
        effective = {
            name: pg.execute(f"SHOW {name}")[0][0] for name in ("fsync", "synchronous_commit", "shared_buffers")
        }
        if effective["fsync"] != "on" or effective["synchronous_commit"] != "on":
            raise SystemExit(f"bench: PostgreSQL is not durable ({effective}); the figures would flatter us")
        report: dict[str, Any] = {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine() | {"busy_before_start_pct": idle_busy},
            "config": {
                "duration_s": args.duration,
                "rounds": args.rounds,
                "warmup_s": args.warmup,
                "wrk_connections": args.connections,
                "open_loop_connections": args.open_connections,
                "pgbench_clients": args.db_clients,
                "web_concurrency": env.get("WEB_CONCURRENCY", "2 (default)"),
                "gunicorn_threads": env.get("GUNICORN_THREADS", "4 (default)"),
                "postgres": f"{version}, max_connections {PRODUCTION_MAX_CONNECTIONS}",
                "postgres_settings": effective,
                "sizes": sizes,
            },
            "sizes": {},
        }
        dsn = pg.dsn(database)
        with (
            reference_server("hello", env, work) as (hello_url, hello_pid),
            reference_server("floor", env | {"BENCH_FLOOR_DSN": dsn}, work) as (floor_url, floor_pid),
        ):
            roots = {"app": app.process.pid, "hello": hello_pid, "floor": floor_pid, "postgres": postmaster}
            seeded = 0
            for size in sizes:
                print(f"seeding {size:,} visitors ...", file=sys.stderr, flush=True)
                seed_s = seed(pg, database, seeded, size)
                seeded = size
                state = check_invariants(pg, database)
                print(f"  seeded in {seed_s} s: {state}", file=sys.stderr, flush=True)
                counted = partial(visits_recorded, pg, database)
                returning_lua, new_lua = WRK_SCRIPTS / "returning_visitor.lua", WRK_SCRIPTS / "new_visitor.lua"
                steps: dict[str, Callable[[], dict[str, Any]]] = {
                    "hello": partial(
                        measure_max, "hello-world", hello_url, returning_lua, args, roots, dsn, server="hello"
                    ),
                    "floor": partial(
                        measure_max, "floor (visit SQL)", floor_url, new_lua, args, roots, dsn, counted, server="floor"
                    ),
                    "returning": partial(
                        measure_max, "GET / returning", app.url, returning_lua, args, roots, dsn, counted
                    ),
                    "new": partial(measure_max, "GET / new", app.url, new_lua, args, roots, dsn, counted),
                    "pgbench_returning": partial(measure_pgbench, pg, database, "returning", args, work, roots),
                    "pgbench_new": partial(measure_pgbench, pg, database, "new", args, work, roots),
                }
                rounds: list[dict[str, Any]] = []
                for number in range(1, args.rounds + 1):
                    print(f" round {number}/{args.rounds}", file=sys.stderr, flush=True)
                    rounds.append({kind: step() for kind, step in steps.items()})
                summary = summarise_rounds(rounds)
                results: dict[str, Any] = {
                    "seed_s": seed_s,
                    "db_before": state,
                    "rounds": rounds,
                    "summary": summary,
                    "pgbench_returning": representative(rounds, "pgbench_returning"),
                    "pgbench_new": representative(rounds, "pgbench_new"),
                    "pgbench_new_one_shard": measure_pgbench(pg, database, "new_one_shard", args, work, roots),
                }
                headers = {
                    "returning": openloop.returning_visitor_headers(RETURNING_POOL),
                    "new": openloop.new_visitor_headers,
                }
                for kind, label in (("returning", "GET / returning"), ("new", "GET / new")):
                    rate = round(summary[f"{kind}_rps"]["median"] * LOAD_FRACTION, 1)
                    results[kind] = {
                        "max": representative(rounds, kind),
                        "at_80pct": measure_at_rate(label, app.url, rate, headers[kind], args, roots, dsn),
                    }
                # Control for the 80 % runs: the generator and gunicorn alone at the visit route's rate.
                # If this tail is long too, it comes from the machine (or the generator), not from the app.
                # No 80 % run of hello-world itself: the Python generator cannot drive ~80 % of a no-op
                # route on the same two cores, and no target depends on it.
                control_rate = results["new"]["at_80pct"]["rate_target"]
                control = measure_at_rate("hello-world (control)", hello_url, control_rate, dict, args, roots, dsn)
                results["hello"] = {
                    "max": representative(rounds, "hello"),
                    "at_80pct": control | {"note": "at GET / new's 80 % rate"},
                }
                results["floor"] = {"max": representative(rounds, "floor")}
                results["db_after"] = check_invariants(pg, database)
                report["sizes"][str(size)] = results
        report["ratios"], report["targets"] = ratios_and_targets(report["sizes"])
        report["all_targets_met"] = all(t["met"] for t in report["targets"])
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(table(report))
        print(f"\nJSON: {args.output}")
        return 1 if args.strict and not report["all_targets_met"] else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
