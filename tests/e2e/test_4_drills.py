"""The resilience drills (drills/compose.py) against the running stack, through the real Traefik (issue 14,
item 7): a replica SIGKILLed under load, PostgreSQL stopped and started under load, the bad-input corpus;
and the one bad input whose answer Traefik, not the app, decides (a malformed chunked body).

Judged: counts and statuses (no acknowledged visit lost, <= 0.1 % failed around a replica loss, only 200/503
around a database restart, then recovery). Timings (the slowest response, how long a replica took to come
back) are printed in the drill report, never asserted. The rolling restart is the e2e rolling deploy
(test_2_operations.py: drain, stop, 0 failed); the replica-loss alert's delivery is its own test there.
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import replace
from pathlib import Path

import pytest

from drills.compose import ComposeCommands, ComposeDrills
from drills.report import DrillResult
from tests.e2e import client
from tests.e2e.engine import ENGINE, Stack
from tests.e2e.test_1_stack import stats

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def drills(stack: Stack, workdir: Path) -> ComposeDrills:
    return ComposeDrills(
        base_url=f"https://localhost:{stack.https_port}",
        # No --file: compose reads the suite's COMPOSE_FILE and COMPOSE_ENV_FILES from stack.env.
        commands=ComposeCommands(docker=str(ENGINE / "usr/bin/docker")),
        run=lambda argv: stack.engine.run(*argv, env=stack.env, timeout=300).stdout,
        steady_s=10,
        db_down_s=5,
        alert=False,
        workdir=workdir,
    )


def report(result: DrillResult) -> None:
    print("\n" + result.text())


def test_drill_replica_killed_under_load(stack: Stack, tmp_path: Path) -> None:
    result = drills(stack, tmp_path).replica_loss()
    report(result)
    figures = result.figures
    assert figures["requests"] > 0
    # No acknowledged visit lost. The 0.1 % target needs more requests than this short drill sends from one
    # address under the rate limit (one failure is 0.2 % of ~500): reported, judged by `make drills`-length
    # runs. What can fail at all is a request Traefik had already written to the killed replica (a 502/504,
    # never retried: it may have been counted), about one per connection Traefik held to it.
    assert result.violations_except("failed-ratio") == [], result.violations
    assert set(figures["statuses"]) <= {200, 502, 504}, figures["statuses"]
    assert figures["failed"] <= 5, figures


def test_drill_database_restart_under_load(stack: Stack, tmp_path: Path) -> None:
    result = drills(stack, tmp_path).db_restart()
    report(result)
    assert result.passed, result.violations


def test_drill_bad_input_through_traefik(stack: Stack, tmp_path: Path) -> None:
    """Malformed requests of every kind (drills/badinput.py) through the real Traefik: no 5xx but Traefik's own
    for an unreadable body, and at most the one visitor the client itself is."""
    result = replace(drills(stack, tmp_path), bad_requests=400).bad_input()
    report(result)
    figures = result.figures
    assert sum(figures["statuses"].values()) == 400, figures
    assert result.passed, result.violations
    assert figures["visitors_added"] <= 1, figures


def test_malformed_chunked_visit_counts_nothing_and_the_app_answers_no_5xx(stack: Stack) -> None:
    """Traefik answers a malformed chunked body with its own 500 (traefik/traefik#11087, docs/security.md
    "Known gaps"); what is ours: nothing is counted and the app never answers it with a 5xx."""
    before = stats(stack)
    probe = secrets.token_hex(8)
    request = (
        f"GET /?chunk-probe={probe} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tally-e2e\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n"
    ).encode()
    with (
        socket.create_connection(("127.0.0.1", stack.https_port), timeout=15) as raw,
        client.context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(request)
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    assert status in (400, 500), answer[:300]
    after = stats(stack)
    assert (after["total_visits"], after["total_visitors"]) == (before["total_visits"], before["total_visitors"])
    lines = [json.loads(line) for line in stack.logs("traefik").splitlines() if probe in line and line.startswith("{")]
    assert lines, "no access log line for the probe"
    if status == 500:
        # Traefik's own answer (Go's status text, 21 bytes, logged by Traefik as OriginStatus 500 too): not the
        # app's error page, which says what was wrong and carries a request id.
        assert answer.endswith(b"\r\n\r\nInternal Server Error"), answer[-300:]
    size = lines[-1].get("OriginContentSize")
    print(f"\nmalformed chunked GET /: {status} to the client; Traefik logged {size} bytes")
