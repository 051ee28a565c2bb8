"""The image's runtime contract, natively (no container engine): the Dockerfile's own CMD, ENV, WORKDIR,
USER and HEALTHCHECK, with the app service's environment from the rendered compose model, run as the
image's unprivileged uid on a read-only copy of exactly the files the Dockerfile copies.

Checks /healthz, /readyz, the HEALTHCHECK command, the process uid, that nothing is written outside the
tmpfs stand-in, and a graceful SIGTERM drain: requests held in flight by a database lock all complete with
200 and are counted, the listener closes at once, and gunicorn exits 0 within its graceful timeout.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests

from harness.postgres import PostgresServer
from harness.procs import free_port, stop_process, wait_until

from .stackutil import REPO, VENV_BIN, exec_form, final_stage, image_env, render

pytestmark = pytest.mark.slow

# gunicorn may hand every connection to the same worker, which serves GUNICORN_THREADS (4) at once: this
# many are always all inside the app (and the database) at the same time, none queued.
IN_FLIGHT = 4


@dataclass
class Image:
    """What the image would contain and how compose would run it."""

    root: Path
    workdir: Path
    env: dict[str, str]
    uid: int
    gid: int
    cmd: list[str]
    healthcheck: list[str]
    migrate: list[str]
    database: str


def _as_user(image: Image, argv: list[str]) -> list[str]:
    # Like `USER 10001:10001` + no-new-privileges: a plain unprivileged process without supplementary groups.
    executable = shutil.which(argv[0], path=image.env["PATH"]) or argv[0]
    return [
        "setpriv",
        f"--reuid={image.uid}",
        f"--regid={image.gid}",
        "--clear-groups",
        "--no-new-privs",
        executable,
        *argv[1:],
    ]


def _read_only_copy(stage_copies: list[list[str]], workdir: Path) -> None:
    for sources in stage_copies:
        for source in sources:
            src = REPO / source
            if src.is_dir():
                shutil.copytree(
                    src, workdir / source.rstrip("/"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
                )
            else:
                shutil.copy2(src, workdir / src.name)
    for path in [workdir, *workdir.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)  # root-owned: the app user cannot write


@pytest.fixture
def image(pg_server: PostgresServer) -> Iterator[Image]:
    if os.geteuid() != 0:
        pytest.fail("this test switches to the image's uid with setpriv and must run as root (as CI does)")
    args, stage = final_stage()
    user = stage.all("USER")[-1].value
    uid, gid = (int(x) for x in user.split(":"))
    root = Path(tempfile.mkdtemp(prefix="tally-image-"))
    root.chmod(0o755)
    try:
        workdir = root / stage.all("WORKDIR")[-1].value.lstrip("/")
        workdir.mkdir(parents=True)
        copies = [ins.value.split()[:-1] for ins in stage.all("COPY") if "--from=" not in ins.value]
        _read_only_copy(copies, workdir)

        # /tmp (a tmpfs in compose) is the only writable place.
        tmpfs = root / "tmp"
        tmpfs.mkdir(mode=0o1777)
        tmpfs.chmod(0o1777)
        # Compose bind-mounts each secret file, root-owned 0644, at /run/secrets/<name>.
        run_secrets = root / "run" / "secrets"
        run_secrets.mkdir(parents=True)
        password = secrets.token_urlsafe(24)
        (run_secrets / "postgres_password").write_text(password)
        (run_secrets / "secret_key").write_text(secrets.token_urlsafe(48))
        for path in run_secrets.iterdir():
            path.chmod(0o644)

        role = "tally_runtime"
        pg_server.execute(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') "
            f"THEN CREATE ROLE {role} LOGIN; END IF; END$$"
        )
        pg_server.execute(f"ALTER ROLE {role} PASSWORD '{password}'")
        database = f"rt_{uuid.uuid4().hex[:10]}"
        pg_server.create_database(database)
        pg_server.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')

        model = render()
        compose_env: dict[str, str] = dict(model["services"]["app"]["environment"])
        env = image_env(stage)
        env.update(compose_env)
        env.update(
            PATH=f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
            HOME="/nonexistent",
            LANG="C.UTF-8",
            # Same shape as compose (user in the URL, password from the secret file), local server.
            DATABASE_URL=f"postgresql+psycopg2://{role}@127.0.0.1:{pg_server.port}/{database}",
            DATABASE_PASSWORD_FILE=str(run_secrets / "postgres_password"),
            SECRET_KEY_FILE=str(run_secrets / "secret_key"),
            PROMETHEUS_MULTIPROC_DIR=str(tmpfs / Path(compose_env["PROMETHEUS_MULTIPROC_DIR"]).name),
            # Fixed 8000/9200 in compose; free ports here, the machine is shared.
            PORT=str(free_port()),
            METRICS_PORT=str(free_port()),
            # The drain test holds a table lock on purpose; don't let the statement timeout end it first.
            DB_STATEMENT_TIMEOUT_MS="15000",
            # Compose's /tmp is the container's own tmpfs; here it would be the host's, shared.
            DRAIN_MARKER=str(tmpfs / Path(compose_env["DRAIN_MARKER"]).name),
            # The drain test ends the delay with a second SIGTERM: no machine is slow enough to end it first.
            SHUTDOWN_DELAY="60",
        )
        for key in [k for k, v in env.items() if k.endswith("_FILE") and v.startswith("/run/secrets/")]:
            raise AssertionError(f"{key} still points into the container: {env[key]}")
        health = stage.all("HEALTHCHECK")[-1].value.partition("CMD ")[2]
        yield Image(
            root=root,
            workdir=workdir,
            env=env,
            uid=uid,
            gid=gid,
            cmd=exec_form(stage.all("CMD")[-1].value),
            healthcheck=exec_form(health),
            migrate=list(model["services"]["migrate"]["command"]),
            database=database,
        )
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(pid)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{pid}\n" in status:
                found.append(int(entry.name))
    return found


def _late_request(base: str) -> object:
    try:
        return requests.get(base + "/", headers={"X-Forwarded-For": "198.51.100.200"}, timeout=30).status_code
    except requests.RequestException as exc:  # refused or reset: not admitted
        return exc


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_image_command_serves_and_drains_gracefully(image: Image, pg_server: PostgresServer, tmp_path: Path) -> None:
    assert int(image.env["GUNICORN_THREADS"]) >= IN_FLIGHT
    probe = subprocess.run(
        _as_user(image, ["python", "-c", "import flask, gunicorn, psycopg2"]),
        env=image.env,
        cwd=image.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, f"uid {image.uid} cannot use {VENV_BIN} (it must be world-readable): {probe.stderr}"

    migrate = subprocess.run(
        _as_user(image, image.migrate),
        env=image.env,
        cwd=image.workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr

    before = _files(image.workdir)
    port, metrics_port = int(image.env["PORT"]), int(image.env["METRICS_PORT"])
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _as_user(image, image.cmd),
            env=image.env,
            cwd=image.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def up() -> bool:
            assert process.poll() is None, f"gunicorn exited {process.returncode}:\n{log_path.read_text()}"
            return requests.get(base + "/healthz", timeout=1).status_code == 200

        wait_until(up, timeout=30, message="/healthz")
        assert requests.get(base + "/healthz", timeout=10).json() == {"status": "ok"}
        assert requests.get(base + "/readyz", timeout=5).status_code == 200
        assert requests.get(base + "/", timeout=5).status_code == 200
        missing = requests.get(base + "/no-such-page", timeout=5)
        assert missing.status_code == 404 and "Traceback" not in missing.text and "debugger" not in missing.text.lower()
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "tally_visits_total" in metrics.text

        # The image's HEALTHCHECK, run as the container would run it; and it does fail on a dead port.
        health = subprocess.run(
            _as_user(image, image.healthcheck), env=image.env, capture_output=True, timeout=30, check=False
        )
        assert health.returncode == 0, health.stderr
        dead = subprocess.run(
            _as_user(image, image.healthcheck),
            env=image.env | {"PORT": str(free_port())},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert dead.returncode != 0

        # Unprivileged everywhere: the master (setpriv exec'd it, same pid) and every worker.
        workers = _children(process.pid)
        assert len(workers) == int(image.env["WEB_CONCURRENCY"])
        assert {_uid_of(pid) for pid in [process.pid, *workers]} == {image.uid}

        # --- graceful drain ------------------------------------------------------------------------------
        results: list[Any] = []
        lock = psycopg2.connect(pg_server.dsn(image.database))
        try:
            lock.cursor().execute("LOCK TABLE visitors IN ACCESS EXCLUSIVE MODE")

            def visit(n: int) -> None:
                try:
                    response = requests.get(base + "/", headers={"X-Forwarded-For": f"198.51.100.{n + 1}"}, timeout=30)
                    results.append(response.status_code)
                except requests.RequestException as exc:
                    results.append(exc)

            threads = [threading.Thread(target=visit, args=(n,)) for n in range(IN_FLIGHT)]
            for thread in threads:
                thread.start()

            def blocked() -> bool:
                with closing(psycopg2.connect(pg_server.dsn("postgres"))) as conn, conn.cursor() as cursor:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
                        (image.database,),
                    )
                    row = cursor.fetchone()
                return row is not None and int(row[0]) >= IN_FLIGHT

            wait_until(blocked, timeout=15, message=f"{IN_FLIGHT} requests waiting on the lock")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            wait_until(lambda: "SIGTERM: serving" in log_path.read_text(), timeout=15, message="SIGTERM handled")
            # SHUTDOWN_DELAY: /readyz now tells Traefik the replica is going (served as usual meanwhile, which
            # tests/app/test_shutdown.py shows: here every thread of a worker may be waiting on the lock).
            assert Path(image.env["DRAIN_MARKER"]).exists()
            # The stop proper: the delay's own end, or at once on a second SIGTERM.
            process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: log_path.read_text().count("Handling signal: term") == 2, timeout=15, message="stop handled"
            )
            # A request arriving now must not be served by a draining worker (Traefik retries it elsewhere).
            late: list[Any] = []
            late_thread = threading.Thread(target=lambda: late.append(_late_request(base)))
            late_thread.start()
            assert process.poll() is None, "gunicorn exited with requests in flight"
        finally:
            lock.rollback()
            lock.close()
        for thread in [*threads, late_thread]:
            thread.join(timeout=30)
        assert results == [200] * IN_FLIGHT, f"in-flight requests failed during shutdown: {results}"
        assert late and late[0] != 200, f"a request sent after SIGTERM was served: {late}"
        graceful = float(image.env["GUNICORN_GRACEFUL_TIMEOUT"])
        assert process.wait(timeout=graceful + 10) == 0, log_path.read_text()
        assert time.monotonic() - started < graceful
        total = pg_server.execute("SELECT sum(visits) FROM total_shards", database=image.database)[0][0]
        assert total == 1 + IN_FLIGHT, "every drained request was counted exactly once"
    finally:
        stop_process(process, timeout=10, sig=signal.SIGKILL)

    assert _files(image.workdir) == before, "the app wrote into its (read-only) code directory"
