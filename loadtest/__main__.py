"""Headless runner: ``python -m loadtest --host URL [--shape smoke|step|spike|soak] [locust options...]``.

Puts the CSV files, the HTML report and summary.json into ``loadtest/results/<UTC time>-<shape>/``
(or ``--results-dir``) and exits with Locust's exit code: 0 when the thresholds hold, non-zero
otherwise. A host that does not accept connections is one line on stderr and exit status 2, before Locust
starts. Any option it does not know is handed to Locust unchanged (e.g. ``--p95-ms 200``,
``--shape-users 50``, user class names to run only some of them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from loadtest import HERE, locust_command

RESULTS = HERE / "results"
CONNECT_TIMEOUT_S = 3


def unreachable(host: str) -> str | None:
    """Why ``host`` cannot be load-tested, or None when it accepts a TCP connection."""
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--host must be an http(s) URL such as http://127.0.0.1:8000, got {host!r}"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return f"{host} does not answer ({reason}); start the target first (make run, or docker compose up -d)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host", required=True, help="target base URL, e.g. https://localhost or http://127.0.0.1:8000"
    )
    parser.add_argument("--shape", default=os.environ.get("LOADTEST_SHAPE", "smoke"))
    parser.add_argument("--results-dir", type=Path, help="default: loadtest/results/<UTC time>-<shape>")
    parser.add_argument("--processes", type=int, default=1, help="Locust worker processes (-1: one per core)")
    args, passthrough = parser.parse_known_args(argv)
    problem = unreachable(args.host)
    if problem:
        print(f"tally-loadtest: {problem}", file=sys.stderr)
        return 2

    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    results = args.results_dir or RESULTS / f"{stamp}-{args.shape}"
    results.mkdir(parents=True, exist_ok=True)
    command = locust_command(
        args.host,
        "--shape",
        args.shape,
        "--csv",
        str(results / "locust"),
        "--csv-full-history",
        "--html",
        str(results / "report.html"),
        *(["--processes", str(args.processes)] if args.processes != 1 else []),
        *passthrough,
    )
    print(f"tally-loadtest results: {results}", flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    raise SystemExit(main())
