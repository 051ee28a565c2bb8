"""Tally's harness: real processes (PostgreSQL, gunicorn, Traefik, Prometheus, Alertmanager, ...) on
127.0.0.1, started from the repository's own configuration and always stopped by PID.

Tests, the benchmark (bench/), the drills (drills/) and the load tests (loadtest/) all use it; it lives
outside tests/ so that tooling never imports the test tree. ``pip install -e .`` (``make venv``) makes it
importable from anywhere.
"""

from pathlib import Path

# The checkout this harness belongs to: compose files, service configs and docs are read from here.
REPO_ROOT = Path(__file__).resolve().parents[1]
