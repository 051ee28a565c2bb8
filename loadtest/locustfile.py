"""Tally load test: visitor mix, load shapes, pass/fail thresholds, a one-line summary and, with
``--ledger``, one line per finished request (the drills' view, loadtest/ledger.py).

Run it through ``python -m loadtest`` (headless, reports into loadtest/results/) or directly:
``locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 --headless --shape smoke``.
Operator documentation: docs/capacity.md.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import gevent  # type: ignore[import-untyped]  # no stubs; Locust runs on it
import requests
from locust import events
from locust.env import Environment
from locust.runners import WorkerRunner

from loadtest import ledger
from loadtest.shapes import SHAPES, Step, TallyShape, build_plan
from loadtest.users import NewVisitor, ReturningVisitor, StatsReader, VersionChecker, env_flag

__all__ = ["NewVisitor", "ReturningVisitor", "StatsReader", "VersionChecker", "TallyShape"]

SUMMARY_FILE = "summary.json"
NEW_VISITOR_REQUEST = "/ (new)"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    group = parser.add_argument_group("Tally load test")
    group.add_argument("--shape", choices=SHAPES, default="smoke", env_var="LOADTEST_SHAPE", help="load shape")
    group.add_argument(
        "--shape-users",
        type=int,
        default=0,
        env_var="LOADTEST_USERS",
        help="users for smoke/soak, peak for spike, users added per step for step (0: shape default)",
    )
    group.add_argument(
        "--shape-duration",
        type=float,
        default=0,
        env_var="LOADTEST_DURATION",
        help="seconds for smoke/spike/soak (0: shape default; bounded to 24 h)",
    )
    group.add_argument("--step-seconds", type=float, default=20, env_var="LOADTEST_STEP_SECONDS")
    group.add_argument("--max-steps", type=int, default=20, env_var="LOADTEST_MAX_STEPS")
    group.add_argument(
        "--p95-ms", type=float, default=500, env_var="LOADTEST_P95_MS", help="fail (or end the step ramp) above this"
    )
    group.add_argument(
        "--max-fail-ratio",
        type=float,
        default=0.01,
        env_var="LOADTEST_MAX_FAIL_RATIO",
        help="fail (or end the step ramp) above this share of failed requests",
    )
    group.add_argument(
        "--ledger",
        default="",
        env_var="LOADTEST_LEDGER",
        help="append one line per finished request to this file (loadtest/ledger.py)",
    )


class Run:
    """What the report needs between test start and quit."""

    started_at: float = 0.0
    visitors_before: int | None = None
    ledger: TextIO | None = None
    ctrl_c: Any = None  # gevent's SIGINT watcher, kept alive for the process


RUN = Run()


@events.init.add_listener
def _init(environment: Environment, **_kwargs: Any) -> None:
    _ctrl_c_in_the_main_greenlet()
    options = environment.parsed_options
    if options is not None and options.ledger:
        # In every process: the requests are made in the workers when there are workers.
        RUN.ledger = open(options.ledger, "a", buffering=1)  # noqa: SIM115 - open for the process lifetime
    if options is None or isinstance(environment.runner, WorkerRunner):
        return
    shape = environment.shape_class
    if isinstance(shape, TallyShape):
        try:
            shape.plan = build_plan(options)
        except ValueError as exc:
            sys.stderr.write(f"loadtest: {exc}\n")
            sys.exit(2)


def _ctrl_c_in_the_main_greenlet() -> None:
    """Locust stops gracefully on Ctrl-C by catching KeyboardInterrupt in its main greenlet: users finish
    the request in flight (--stop-timeout), then the summary. But Python raises the KeyboardInterrupt in
    whichever greenlet runs when SIGINT arrives (gevent/gevent#1815), often a user between sending a
    request and recording it: that user dies without its ledger line although the target saw the request,
    and in gevent's own callbacks it can cut a wake-up short. Handled in gevent's loop instead, the
    interrupt reaches the main greenlet, and only while it waits (background.py stops the drills' load with
    SIGINT, an operator with Ctrl-C)."""
    hub = gevent.get_hub()
    RUN.ctrl_c = gevent.signal_handler(
        signal.SIGINT, lambda: hub.loop.run_callback(hub.parent.throw, KeyboardInterrupt)
    )


@events.test_start.add_listener
def _test_start(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    RUN.started_at = time.time()
    RUN.visitors_before = _total_visitors(environment)


@events.request.add_listener
def _record(
    request_type: str,
    response_time: float,
    response: Any = None,
    exception: BaseException | None = None,
    start_time: float | None = None,
    url: str | None = None,
    **_kwargs: Any,
) -> None:
    if RUN.ledger is None:
        return
    status = getattr(response, "status_code", 0) or 0
    ok = exception is None and status == 200
    RUN.ledger.write(ledger.line(request_type, url or "", start_time or 0, response_time, status, ok))


@events.quit.add_listener
def _close_ledger(**_kwargs: Any) -> None:
    if RUN.ledger is not None:
        RUN.ledger.flush()


@events.quitting.add_listener
def _quitting(environment: Environment, **_kwargs: Any) -> None:
    if isinstance(environment.runner, WorkerRunner) or environment.runner is None:
        return
    options = environment.parsed_options
    summary = summarise(environment)
    print(summary_line(summary), flush=True)
    for warning in summary["warnings"]:
        print(f"tally-loadtest WARNING: {warning}", flush=True)
    csv_prefix = getattr(options, "csv_prefix", None)
    if csv_prefix:
        Path(csv_prefix).parent.mkdir(parents=True, exist_ok=True)
        (Path(csv_prefix).parent / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    _annotate_grafana(summary)
    if summary["verdict"] == "PASS":
        # Within the tolerated failure ratio is a pass, but a crash in our own user code never is.
        if not environment.runner.exceptions:
            environment.process_exit_code = 0
    else:
        environment.process_exit_code = 1


def summarise(environment: Environment) -> dict[str, Any]:
    options = environment.parsed_options
    runner = environment.runner
    assert options is not None and runner is not None
    total = runner.stats.total
    requests_made, failures = total.num_requests, total.num_failures
    fail_ratio = failures / requests_made if requests_made else 0.0
    elapsed = max(time.time() - RUN.started_at, 1e-6) if RUN.started_at else 0.0
    p95 = total.get_response_time_percentile(0.95) if requests_made else 0
    shape = environment.shape_class
    plan = shape.plan if isinstance(shape, TallyShape) else None
    limits = {"p95_ms": float(options.p95_ms), "max_fail_ratio": float(options.max_fail_ratio)}
    reasons: list[str] = []
    knee = None
    if isinstance(plan, Step):
        knee = plan.knee.as_dict()
        if not plan.knee.found:
            reasons.append(f"no step stayed within the limits ({plan.knee.reason})")
    else:
        if requests_made == 0:
            reasons.append("no requests were made")
        if p95 > limits["p95_ms"]:
            reasons.append(f"p95 {p95} ms > {limits['p95_ms']:g} ms")
        if fail_ratio > limits["max_fail_ratio"]:
            reasons.append(f"failure ratio {fail_ratio:.2%} > {limits['max_fail_ratio']:.2%}")
    if runner.exceptions:
        reasons.append(f"{len(runner.exceptions)} exception(s) in the load test's own code")
    warnings = []
    trusted = _forwarded_for_trusted(environment)
    if trusted is False:
        warnings.append(
            "the target ignores X-Forwarded-For from this generator: all NewVisitor requests counted as one"
            " visitor (set TRUSTED_PROXY_HOPS / Traefik trustedIPs for a test target, see docs/capacity.md)"
        )
    return {
        "shape": plan.describe() if plan else "none",
        "shape_name": getattr(options, "shape", "none"),
        "host": environment.host,
        "started_at": RUN.started_at,
        "duration_s": round(elapsed, 1),
        "requests": requests_made,
        "failures": failures,
        "fail_ratio": round(fail_ratio, 5),
        "rps": round(requests_made / elapsed, 1) if elapsed else 0.0,
        "p50_ms": total.get_response_time_percentile(0.5) if requests_made else 0,
        "p95_ms": p95,
        "p99_ms": total.get_response_time_percentile(0.99) if requests_made else 0,
        "limits": limits,
        "knee": knee,
        "forwarded_for_trusted": trusted,
        "verdict": "FAIL" if reasons else "PASS",
        "reasons": reasons,
        "warnings": warnings,
        "per_request": {
            f"{entry.method} {entry.name}": {
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "p50_ms": entry.get_response_time_percentile(0.5),
                "p95_ms": entry.get_response_time_percentile(0.95),
                "p99_ms": entry.get_response_time_percentile(0.99),
            }
            for entry in runner.stats.entries.values()
        },
    }


def summary_line(summary: dict[str, Any]) -> str:
    line = (
        f"tally-loadtest shape={summary['shape_name']} requests={summary['requests']}"
        f" failures={summary['failures']} ({summary['fail_ratio']:.2%}) rps={summary['rps']}"
        f" p50={summary['p50_ms']}ms p95={summary['p95_ms']}ms p99={summary['p99_ms']}ms"
    )
    knee = summary["knee"]
    if knee is not None:
        line += (
            f" knee=users:{knee['users']},rps:{knee['rps']},p95:{knee['p95_ms']}ms" if knee["found"] else " knee=none"
        )
    line += f" verdict={summary['verdict']}"
    if summary["reasons"]:
        line += " (" + "; ".join(summary["reasons"]) + ")"
    return line


def _verify() -> bool:
    return not env_flag("LOADTEST_INSECURE")


def _total_visitors(environment: Environment) -> int | None:
    if not environment.host:
        return None
    try:
        response = requests.get(environment.host.rstrip("/") + "/api/stats", timeout=5, verify=_verify())
        value = response.json()["total_visitors"] if response.status_code == 200 else None
        return int(value) if value is not None else None
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def _forwarded_for_trusted(environment: Environment) -> bool | None:
    """Did distinct X-Forwarded-For addresses become distinct visitors? None when we cannot tell."""
    runner = environment.runner
    assert runner is not None
    entry = runner.stats.entries.get((NEW_VISITOR_REQUEST, "GET"))
    new_ok = entry.num_requests - entry.num_failures if entry else 0
    if new_ok < 2 or RUN.visitors_before is None:
        return None
    after = _total_visitors(environment)
    if after is None:
        return None
    # Every successful NewVisitor request carries a fresh random address: when the header is honoured,
    # each one adds a visitor (random 32-bit collisions are negligible), returning visitors add more.
    return after - RUN.visitors_before >= max(2, int(0.9 * new_ok))


def _annotate_grafana(summary: dict[str, Any]) -> None:
    """One region annotation per run, so dashboards show when the load came from us."""
    url, token = os.environ.get("GRAFANA_URL"), os.environ.get("GRAFANA_TOKEN")
    if not url or not token or not summary["started_at"]:
        return
    body: dict[str, Any] = {
        "time": int(summary["started_at"] * 1000),
        "timeEnd": int(time.time() * 1000),
        "tags": ["loadtest", summary["shape_name"], summary["verdict"].lower()],
        "text": summary_line(summary),
    }
    try:
        response = requests.post(
            url.rstrip("/") + "/api/annotations",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
            verify=_verify(),
        )
        if response.status_code >= 300:
            print(f"tally-loadtest WARNING: Grafana annotation refused: HTTP {response.status_code}", flush=True)
    except requests.RequestException as exc:
        print(f"tally-loadtest WARNING: Grafana annotation failed: {exc}", flush=True)
