"""The real app under the production gunicorn config, on a free local port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests

from . import REPO_ROOT
from .procs import free_port, read_log, start_logged, stop_process

GUNICORN = Path(sys.executable).parent / "gunicorn"
TEST_SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnop"  # noqa: S105 - a test key, never deployed


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def answers(self, path: str) -> bool:
        return requests.get(self.url + path, timeout=1).status_code == 200

    def healthy(self) -> bool:
        return self.answers("/healthz")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        stop_process(self.process, timeout=timeout, sig=sig)
        return self.process.returncode

    def log(self) -> str:
        return read_log(self.log_path)


def base_env(database_url: str, tmp_path: Path, **overrides: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("TALLY_", "SENTRY_", "DB_"))}
    env.update(
        TALLY_ENV="production",
        DATABASE_URL=database_url,
        SECRET_KEY=TEST_SECRET_KEY,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prometheus-multiproc"),
        LOG_LEVEL="INFO",
    )
    env.update(overrides)
    return env


def run_gunicorn(
    env: dict[str, str],
    log_path: Path,
    *,
    wait: bool = True,
    cwd: Path = REPO_ROOT,
    extra_args: tuple[str, ...] = (),
    wsgi_app: str = "app:create_app()",
    ready_path: str = "/healthz",
) -> Gunicorn:
    """Start ``gunicorn -c gunicorn.conf.py app:create_app()`` as the image does (or another WSGI app under
    the same settings, e.g. the benchmark's hello-world)."""
    port = int(env.get("PORT") or free_port())
    metrics_port = int(env.get("METRICS_PORT") or free_port())
    # No proxy to wait for here: a test's SIGTERM stops at once unless it asks for the delay (app/shutdown.py).
    env = {"SHUTDOWN_DELAY": "0"} | env | {"PORT": str(port), "METRICS_PORT": str(metrics_port)}
    server_url = f"http://127.0.0.1:{port}"
    process = start_logged(
        "gunicorn",
        [str(GUNICORN), "--config", "gunicorn.conf.py", *extra_args, wsgi_app],
        log_path,
        cwd=cwd,
        env=env,
        ready=(lambda: requests.get(server_url + ready_path, timeout=1).status_code == 200) if wait else None,
    )
    return Gunicorn(process=process, port=port, metrics_port=metrics_port, log_path=log_path)


def migrate(database_url: str, tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "flask"), "--app", "app", "db", "upgrade"],
        cwd=REPO_ROOT,
        env=base_env(database_url, tmp_path, **overrides),
        capture_output=True,
        text=True,
        timeout=120,
    )
