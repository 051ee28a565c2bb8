"""Production gunicorn settings, all taken from the app's validated configuration.

gunicorn loads this file in the master, so an invalid environment stops the server here with one
readable line, before any worker starts."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from app.config import load_config_or_exit
from app.shutdown import delay_termination
from app.watchdog import RequestWatchdog

_config = load_config_or_exit()

wsgi_app = "app:create_app()"
bind = [_config.bind]
workers = _config.web_concurrency
worker_class = "gthread"
threads = _config.gunicorn_threads
timeout = _config.gunicorn_timeout
# With SHUTDOWN_DELAY before it, must end before compose's stop_grace_period (30 s): in-flight requests
# finish before SIGKILL.
graceful_timeout = _config.gunicorn_graceful_timeout
keepalive = 5
# Header limits: an oversized or endless header block is refused with 400 before Flask sees it.
limit_request_line = 4094
limit_request_fields = 50
limit_request_field_size = 8190
# Logs are JSON from the app and Traefik's access log; gunicorn's own lines go to stderr.
accesslog = None
errorlog = "-"
loglevel = _config.log_level.lower()
# Worker heartbeat files on tmpfs: the image's filesystem is read-only.
worker_tmp_dir = "/dev/shm" if Path("/dev/shm").is_dir() else None  # noqa: S108 - tmpfs, not a shared temp file
proc_name = "tally"
# gunicorn's control socket is one path per user ($HOME/.gunicorn); several instances would share it.
control_socket_disable = True


# gunicorn's timeout cannot see threads stuck in a request (app/watchdog.py): each worker watches its own.
_watchdog = RequestWatchdog(_config.gunicorn_timeout)


def post_worker_init(worker: Any) -> None:
    _watchdog.watch()


def pre_request(worker: Any, req: Any) -> None:
    _watchdog.begin(req)


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    _watchdog.end(req)


def on_starting(server: Any) -> None:
    # Files left by a previous run would add dead workers' counters to the new ones.
    directory = _config.prometheus_multiproc_dir
    if directory:
        path = Path(directory)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)


def when_ready(server: Any) -> None:
    if _config.shutdown_delay:
        delay_termination(server, _config.shutdown_delay, _config.drain_marker)
    if _config.prometheus_multiproc_dir:
        from app.logs import configure_logging
        from app.metrics import start_metrics_server

        # The metrics listener logs its refusals from this process: JSON lines like the workers'.
        configure_logging(_config.log_level)
        start_metrics_server(_config)


def child_exit(server: Any, worker: Any) -> None:
    if _config.prometheus_multiproc_dir:
        from prometheus_flask_exporter.multiprocess import GunicornPrometheusMetrics

        GunicornPrometheusMetrics.mark_process_dead_on_child_exit(worker.pid)
