"""Where a request's CPU goes under load: `GET /` and hello-world, each under gunicorn.conf.py and wrk.

    .venv/bin/python -m bench.profile_load [--rounds 2] [--duration 10] [--no-sample]
                                           [--gunicorn-args "-k sync -w 8 --threads 1"]

``make bench-profile`` measures one request inside the app process; under gunicorn with requests in
flight a visit costs about twice that, and no single-request profile shows why. This drives each server
as ``make bench`` does (wrk, closed loop, 16 keep-alive connections, PostgreSQL with the production
settings, 1 000 visitors seeded; hello-world, the floor of a visit (bench/floor.py), `GET /` new and
returning, interleaved, ``--rounds`` times) and reads over exactly wrk's run:

- the CPU per request of the server's workers, user and system, and their context switches per request;
- in a second run of the same length, with py-spy (pinned in the dev lock), a sample of the workers'
  Python stacks taken only while a thread holds the GIL (``--gil --nonblocking``): own time per area
  (gunicorn, Werkzeug, Flask, the app, SQLAlchemy, metrics, ...) in microseconds per request. The
  sampled run is separate so that py-spy's own CPU on the shared cores does not enter the first figures.

``--gunicorn-args`` are added to both servers' command line (they override gunicorn.conf.py), to compare
worker models with the same measurement. Writes JSON to ``--output`` and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import signal
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psutil

from bench.profile_visit import area_of
from bench.run import (
    BALANCED,
    MAX_ATTEMPTS,
    machine,
    need,
    reference_server,
    scratch_postgres,
    seed,
    worker_balance,
    wrk,
)
from harness.gunicorn import base_env, migrate, run_gunicorn
from loadtest import WRK_SCRIPTS

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "profile-load.json"
SAMPLE_HZ = 250
VISITORS = 1_000
# py-spy prints each stack as "frame;frame;... count", a frame as "function (path:line)".
_FRAME_PATH = re.compile(r"\(([^()]*):\d+\)$")
SCENARIOS = (
    ("hello", "hello-world", "returning_visitor.lua"),
    ("floor", "floor (visit SQL)", "new_visitor.lua"),
    ("new", "GET / new", "new_visitor.lua"),
    ("returning", "GET / returning", "returning_visitor.lua"),
)


def frame_area(frame: str) -> str:
    found = _FRAME_PATH.search(frame)
    # py-spy names files relative to their sys.path entry ("app/views.py"); cProfile's are absolute.
    return area_of("/" + found[1]) if found else area_of("")


def samples_by_area(lines: Iterable[str]) -> Counter[str]:
    """py-spy's raw (collapsed) output → samples per area of the innermost frame: own time, no double counting."""
    totals: Counter[str] = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit():
            totals[frame_area(stack.split(";")[-1])] += int(count)
    return totals


def usage(processes: list[psutil.Process]) -> dict[str, float]:
    totals = Counter[str]()
    for process in processes:
        times, switches = process.cpu_times(), process.num_ctx_switches()
        totals.update(
            user=times.user, system=times.system, voluntary=switches.voluntary, involuntary=switches.involuntary
        )
    return dict(totals)


def per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    delta = {key: after.get(key, 0.0) - before.get(key, 0.0) for key in after}
    return {
        "cpu_us": round(1e6 * (delta["user"] + delta["system"]) / requests),
        "system_us": round(1e6 * delta["system"] / requests),
        "context_switches": round((delta["voluntary"] + delta["involuntary"]) / requests, 2),
    }


def sampled_run(
    url: str, script: Path, workers: list[psutil.Process], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """wrk again, with py-spy on every worker for the same length: GIL-held microseconds per request by area."""
    spy = need("py-spy", "make venv (py-spy is in requirements-dev.lock)")
    outputs = [work / f"spy-{worker.pid}.txt" for worker in workers]
    spies = [
        subprocess.Popen(
            [spy, "record", "--pid", str(worker.pid), "--duration", f"{args.duration:g}", "--rate", str(SAMPLE_HZ),
             "--gil", "--nonblocking", "--format", "raw", "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for worker, output in zip(workers, outputs, strict=True)
    ]  # fmt: skip
    result = wrk(url, script, args.duration, args.connections)
    samples: Counter[str] = Counter()
    for process, output in zip(spies, outputs, strict=True):
        _, err = process.communicate(timeout=args.duration + 60)
        if process.returncode != 0 or not output.exists():
            raise SystemExit(f"bench: py-spy failed ({process.returncode}): {err.strip()[-500:]}")
        samples.update(samples_by_area(output.read_text().splitlines()))
    us_per_sample = 1e6 / SAMPLE_HZ
    return {
        "rps": result["rps"],
        "gil_us": round(sum(samples.values()) * us_per_sample / result["requests"]),
        "areas_us": {area: round(n * us_per_sample / result["requests"]) for area, n in samples.most_common()},
    }


def _worker_cpu(workers: list[psutil.Process]) -> list[float]:
    return [sum(worker.cpu_times()[:2]) for worker in workers]


def measure(label: str, url: str, script: Path, master: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    wrk(url, script, args.warmup, args.connections)
    workers = psutil.Process(master).children()
    # As in `make bench`: a run in which one worker accepted every keep-alive connection measures one
    # worker; retry with fresh connections, keep the most even attempt.
    attempts: list[dict[str, Any]] = []
    for _ in range(MAX_ATTEMPTS):
        before, split_before = usage(workers), _worker_cpu(workers)
        result = wrk(url, script, args.duration, args.connections)
        after, split_after = usage(workers), _worker_cpu(workers)
        attempt = {"rps": result["rps"]} | per_request(before, after, result["requests"])
        attempt["worker_balance"] = worker_balance([b - a for a, b in zip(split_before, split_after, strict=True)])
        attempts.append(attempt)
        if attempt["worker_balance"] >= BALANCED:
            break
    measured = max(attempts, key=lambda a: (a["worker_balance"] >= BALANCED, a["worker_balance"]))
    measured["attempts"] = len(attempts)
    if args.sample:
        measured["sampled"] = sampled_run(url, script, workers, args, work)
    rate, cpu = measured["rps"], measured["cpu_us"]
    print(f"  {label:<16} {rate:8.1f} req/s  {cpu:5d} us CPU/req", file=sys.stderr, flush=True)
    return measured


def summary(rounds: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    runs = [r[kind] for r in rounds]
    out: dict[str, Any] = {
        key: statistics.median(run[key] for run in runs) for key in ("rps", "cpu_us", "system_us", "context_switches")
    }
    sampled = [run["sampled"] for run in runs if "sampled" in run]
    if sampled:
        out["gil_us"] = statistics.median(s["gil_us"] for s in sampled)
        areas = {area for s in sampled for area in s["areas_us"]}
        out["areas_us"] = {area: statistics.median(s["areas_us"].get(area, 0) for s in sampled) for area in areas}
    return out


def _cells(values: list[float], decimals: int, differences: bool) -> str:
    """The scenarios' cells, then floor − hello and new − floor (SCENARIOS' order: hello, floor, new, returning)."""
    hello, floor, new = values[:3]
    cells = [*values, floor - hello, new - floor] if differences else [*values, None, None]
    return " | ".join("" if value is None else f"{value:.{decimals}f}" for value in cells) + " |"


def table(report: dict[str, Any]) -> str:
    summaries = report["summary"]
    kinds = [kind for kind, _label, _script in SCENARIOS]
    lines = [
        "| per request (median of rounds) | " + " | ".join(kinds) + " | floor − hello | new − floor |",
        "|---" * (len(kinds) + 3) + "|",
    ]
    rows = [("req/s", "rps"), ("CPU of the workers, µs", "cpu_us"), ("of which system, µs", "system_us"),
            ("context switches", "context_switches"), ("GIL held (sampled), µs", "gil_us")]  # fmt: skip
    for title, key in rows:
        values = [summaries[kind].get(key) for kind in kinds]
        if None in values:
            continue
        decimals = 2 if key == "context_switches" else 0
        lines.append(f"| {title} | " + _cells(values, decimals, differences=key != "rps"))
    areas = sorted(
        {area for kind in kinds for area in summaries[kind].get("areas_us", {})},
        key=lambda area: -summaries["new"].get("areas_us", {}).get(area, 0),
    )
    for area in areas:
        values = [summaries[kind]["areas_us"].get(area, 0) for kind in kinds]
        lines.append(f"| … {area}, µs | " + _cells(values, 0, differences=True))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_load", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--no-sample", dest="sample", action="store_false", help="CPU and context switches only")
    parser.add_argument("--gunicorn-args", default="", help="extra gunicorn arguments for both servers")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the table of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    need("wrk", "apt install wrk")
    if args.sample:
        need("py-spy", "make venv (py-spy is in requirements-dev.lock)")
    extra_args = tuple(shlex.split(args.gunicorn_args))

    with scratch_postgres("tally-profile-load-") as (pg, work), ExitStack() as servers_to_stop:
        url = pg.create_database("tally")
        if (migrated := migrate(url, work)).returncode != 0:
            raise SystemExit(f"bench: migration failed:\n{migrated.stderr}")
        seed(pg, "tally", 0, VISITORS)
        env = base_env(url, work, TRUSTED_PROXY_HOPS="1")
        app = run_gunicorn(env, work / "app.log", extra_args=extra_args)
        servers_to_stop.callback(app.stop)
        rounds: list[dict[str, Any]] = []
        floor_env = env | {"BENCH_FLOOR_DSN": pg.dsn("tally")}
        with (
            reference_server("hello", env, work, extra_args) as hello,
            reference_server("floor", floor_env, work, extra_args) as floor,
        ):
            app_server = (app.url, app.process.pid)
            servers = {"hello": hello, "floor": floor, "new": app_server, "returning": app_server}
            for number in range(1, args.rounds + 1):
                print(f" round {number}/{args.rounds}", file=sys.stderr, flush=True)
                measured: dict[str, Any] = {}
                for kind, label, script in SCENARIOS:
                    server_url, master = servers[kind]
                    measured[kind] = measure(label, server_url, WRK_SCRIPTS / script, master, args, work)
                rounds.append(measured)
        report = {
            "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "config": {"duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
                       "gunicorn_args": args.gunicorn_args, "visitors": VISITORS, "sample_hz": SAMPLE_HZ},
            "rounds": rounds,
            "summary": {kind: summary(rounds, kind) for kind, _label, _script in SCENARIOS},
        }  # fmt: skip
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2) + "\n")
        print(table(report))
        print(f"\nJSON: {args.output}")
        return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
