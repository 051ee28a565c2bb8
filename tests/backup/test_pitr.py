"""Point-in-time recovery on a real PostgreSQL 15: the sidecar streams the WAL (pg_receivewal through a
replication slot) and takes base backups; the drills destroy the data directory or go back in time and
count what comes back. Visits are recorded with the app's own statement (app.counting.record_visit) and
count as acknowledged once it returned.

The RPO drill prints its figures (acknowledged visits lost, age of the oldest one lost); it asserts
only what must hold: nothing acknowledged before the last WAL the sidecar confirmed is lost, and
nothing appears that was never sent."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from app.counting import record_visit
from harness.gunicorn import migrate
from harness.postgres import SUPERUSER, PostgresServer
from harness.procs import free_port, stop_process, wait_until

from .conftest import BIN, run_sidecar, summary
from .test_offsite import FAKE_AWS

pytestmark = pytest.mark.slow


def as_postgres() -> dict[str, object]:
    """initdb/pg_ctl/postgres refuse root: the sidecar commands run as the data directory's owner."""
    return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if os.geteuid() == 0 else {}


@dataclass
class Writer:
    """Records visits continuously from a thread; every acknowledged one is timestamped."""

    url: str
    acked: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def _run(self) -> None:
        engine = create_engine(self.url, pool_size=1, max_overflow=0)
        try:
            while not self.stop.is_set():
                try:
                    record_visit(engine, bytes([len(self.acked) % 40]) * 32)
                except Exception:  # noqa: BLE001 - the database is being killed under it
                    return
                self.acked.append(time.time())
        finally:
            engine.dispose()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def wait_for(self, count: int) -> None:
        wait_until(lambda: len(self.acked) >= count, timeout=60, message=f"{count} acknowledged visits")

    def finish(self) -> int:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=30)
        return len(self.acked)


@dataclass
class Cluster:
    server: PostgresServer
    backup_dir: Path
    env: dict[str, str]
    scheduler: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return self.server.url("tally")

    def run(self, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return run_sidecar(command, *args, env=self.env | env, timeout=300, **as_postgres())

    def start_scheduler(self, schedule: str = "off") -> None:
        self.scheduler = subprocess.Popen(
            [str(BIN / "backup-scheduler")],
            env=self.env | {"BACKUP_SCHEDULE": schedule},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            **as_postgres(),  # type: ignore[arg-type]
        )
        wait_until(lambda: self.metric("tally_backup_wal_streaming") == 1, timeout=60, message="WAL streaming")
        # Without a base backup of the server's timeline the scheduler takes one at once.
        wait_until(lambda: self.metric("tally_backup_base_last_run_success") == 1, timeout=120, message="base backup")

    def stop_scheduler(self) -> None:
        """The scheduler and everything it started (a base backup in progress, pg_receivewal): nothing may still
        write to the backup directory once this returns."""
        assert self.scheduler is not None
        group = self.scheduler.pid
        os.killpg(group, signal.SIGTERM)
        self.scheduler.wait(timeout=30)

        def group_gone() -> bool:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return True
            return False

        wait_until(group_gone, timeout=60, message="the scheduler's children to exit")
        self.scheduler = None

    def metric(self, name: str) -> float | None:
        path = self.backup_dir / "metrics" / "tally_backup.prom"
        text = path.read_text() if path.exists() else ""
        match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    def sql(self, statement: str) -> list[tuple[object, ...]]:
        return self.server.execute(statement, "tally")

    def counts(self) -> tuple[int, int]:
        row = self.sql("SELECT count(*), coalesce(sum(visits), 0) FROM visitors")[0]
        return int(str(row[0])), int(str(row[1]))

    def visit(self, count: int) -> None:
        """Records `count` visits, continuously, and returns once all are acknowledged."""
        writer = Writer(self.url)
        writer.start()
        writer.wait_for(count)
        writer.finish()

    def wait_streamed(self) -> None:
        """Until the sidecar has flushed every byte of WAL the server has flushed now."""
        target = self.sql("SELECT pg_current_wal_flush_lsn()")[0][0]
        wait_until(
            lambda: self.server.execute(
                f"SELECT coalesce(bool_or(flush_lsn >= '{target}'), false) FROM pg_stat_replication"  # noqa: S608
            )[0][0],
            timeout=30,
            message="WAL streamed to the sidecar",
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    # The drill's server acknowledges a commit only once it is flushed, as production does.
    server = PostgresServer.create(max_connections=40, extra_settings=("synchronous_commit=on", "full_page_writes=on"))
    backup_dir = Path(tempfile.mkdtemp(prefix="tally-pitr-"))
    try:
        result = migrate(server.create_database("tally"), tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        if os.geteuid() == 0:
            shutil.chown(backup_dir, SUPERUSER, SUPERUSER)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "BACKUP_", "AWS_"))}
        env.update(
            PATH=f"{server.bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
            HOME=str(backup_dir),
            PGHOST="127.0.0.1",
            PGPORT=str(server.port),
            PGUSER=SUPERUSER,
            PGDATABASE="tally",
            PGDATA=str(server.data_dir),
            BACKUP_DIR=str(backup_dir / "backups"),
            BACKUP_PREFIX="tally",
            BACKUP_LOCK_WAIT="5",
            BACKUP_WAL_CHECK_INTERVAL="1",
            BACKUP_RECOVERY_PORT=str(free_port()),
            BACKUP_HEARTBEAT_FILE=str(backup_dir / "heartbeat"),
        )
        cluster = Cluster(server=server, backup_dir=backup_dir / "backups", env=env)
        yield cluster
        if cluster.scheduler is not None:
            stop_process(cluster.scheduler)  # type: ignore[arg-type]
    finally:
        server.destroy()
        shutil.rmtree(backup_dir, ignore_errors=True)


def test_rpo_drill_data_directory_lost_under_load_restores_to_the_latest_point(cluster: Cluster) -> None:
    writer = Writer(cluster.url)
    writer.start()
    writer.wait_for(50)
    cluster.start_scheduler()  # its first base backup is taken under load
    writer.wait_for(len(writer.acked) + 200)

    # Everything acknowledged up to here is in WAL the sidecar has confirmed.
    confirmed = len(writer.acked)
    cluster.wait_streamed()
    writer.wait_for(confirmed + 200)

    # The host dies under load: no shutdown, the data directory is gone.
    cluster.server.stop("immediate")
    killed_at = time.time()
    acknowledged = writer.finish()
    shutil.rmtree(cluster.server.data_dir)
    cluster.stop_scheduler()

    restored = cluster.run("restore", "--to", "latest", "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    line = summary(restored, "restore")
    assert line.startswith("restore: OK kind=pitr") and "previous=none" in line
    cluster.server.start()
    _, visits = cluster.counts()

    lost = max(acknowledged - visits, 0)
    oldest_lost_age = killed_at - writer.acked[visits] if lost > 0 else 0.0
    print(
        f"\nRPO drill: acknowledged={acknowledged} restored={visits} lost={lost} "
        f"oldest_lost_acknowledged={oldest_lost_age:.1f}s_before_the_kill"
    )
    # The one visit in flight when the server died may be committed without its answer reaching the
    # writer (a single connection: at most one).
    assert confirmed <= visits <= acknowledged + 1, (confirmed, visits, acknowledged)
    assert f"visits={visits} " in line

    # The sidecar streams the new timeline from the restored server, slot recreated, and takes a base
    # backup of that timeline by itself.
    cluster.start_scheduler()
    base_dir = cluster.backup_dir / "base"
    wait_until(
        lambda: any("timeline=2\n" in m.read_text() for m in base_dir.glob("*.manifest")),
        timeout=120,
        message="base backup of timeline 2",
    )
    cluster.visit(20)
    cluster.wait_streamed()


def test_restore_to_a_timestamp_shows_the_counts_as_they_were(cluster: Cluster) -> None:
    cluster.visit(100)
    cluster.start_scheduler()  # takes the first base backup
    cluster.visit(50)
    second = cluster.run("backup-base", BACKUP_BASE_KEEP="1")
    assert second.returncode == 0, second.stdout + second.stderr

    # Retention: one base backup kept, and no archived WAL older than the one it starts from.
    bases = sorted(p.name for p in (cluster.backup_dir / "base").iterdir() if p.is_dir())
    kept = re.search(r"name=(\S+)", summary(second, "backup-base"))
    assert kept and bases == [kept.group(1)]
    start = re.search(r"start_wal=(\S+)", summary(second, "backup-base"))
    assert start
    archived = [p.name for p in (cluster.backup_dir / "wal" / "archive").iterdir() if len(p.name) == 24]
    assert all(name[8:] >= start.group(1)[8:] for name in archived), (archived, start.group(1))
    listed = cluster.run("backups")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert kept.group(1) in listed.stdout and "restore --to reaches back to" in listed.stdout
    assert "; 1 base backups; " in summary(listed, "backups")

    cluster.visit(150)
    counts_then = cluster.counts()
    moment = str(
        cluster.sql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00')")[0][0]
    )
    cluster.visit(150)
    assert cluster.counts() != counts_then
    cluster.wait_streamed()

    refused = cluster.run("restore", "--to", moment, "--yes")
    assert refused.returncode == 75 and "stop the backup service first" in summary(refused, "restore")
    cluster.stop_scheduler()
    running = cluster.run("restore", "--to", moment, "--yes")
    assert running.returncode == 2 and "is running: stop it first" in summary(running, "restore")
    assert cluster.counts() != counts_then

    cluster.server.stop("fast")
    restored = cluster.run("restore", "--to", moment, "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    line = summary(restored, "restore")
    assert f"target={moment} " in line and "pre-restore-" in line
    assert f"visitors={counts_then[0]} visits={counts_then[1]} " in line
    cluster.server.start()
    assert cluster.counts() == counts_then

    too_early = cluster.run("restore", "--to", "2020-01-01 00:00:00+00", "--yes")
    assert too_early.returncode in (1, 2)


def test_offsite_copy_of_base_backups_and_wal_restores_on_a_new_host(cluster: Cluster) -> None:
    """Everything travels age-encrypted through (a fake) S3; a new host with an empty volume fetches
    the base backup and the WAL and restores to the last complete segment."""
    work = cluster.backup_dir.parent  # reachable by the postgres user the commands run as
    bin_dir, s3 = work / "fakebin", work / "s3"
    for folder in (bin_dir, s3):
        folder.mkdir()
        if os.geteuid() == 0:
            shutil.chown(folder, SUPERUSER, SUPERUSER)
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    identity, recipient = work / "identity.txt", work / "recipient.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient.write_text(
        subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True).stdout
    )
    for path in (identity, recipient):
        path.chmod(0o644)
    cluster.env |= {
        "PATH": f"{bin_dir}:{cluster.env['PATH']}",
        "FAKE_S3": str(s3),
        "BACKUP_S3_BUCKET": "tally-backups",
        "BACKUP_AGE_RECIPIENT_FILE": str(recipient),
    }
    # First start: the catch-up run takes the dump, verifies it, then the base backup, all copied offsite.
    cluster.start_scheduler("30 2 * * *")
    wait_until(lambda: cluster.metric("tally_backup_last_verify_success") == 1, timeout=120, message="dump verified")
    assert cluster.metric("tally_backup_offsite_last_run_success") == 1
    uploaded = sorted(p.name for p in (s3 / "tally-backups" / "tally" / "base").iterdir())
    assert uploaded and all(p.endswith((".manifest", ".tar.age")) for p in uploaded)
    assert len([p for p in uploaded if p.endswith(".tar.age")]) == len(uploaded) // 2
    cluster.visit(300)
    counts = cluster.counts()
    # Only complete segments go offsite: close the current one and wait for its upload.
    segment = str(cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")[0][0])
    wal = s3 / "tally-backups" / "tally" / "wal"
    wait_until(lambda: (wal / f"{segment}.age").exists(), timeout=60, message=f"{segment} uploaded")
    assert (wal / f"{segment}.age").read_bytes().startswith(b"age-encryption.org/v1\n")
    assert cluster.metric("tally_backup_wal_offsite_last_success_timestamp_seconds")
    cluster.stop_scheduler()

    # The whole host is gone: data directory and backup volume.
    cluster.server.stop("immediate")
    shutil.rmtree(cluster.server.data_dir)
    shutil.rmtree(cluster.backup_dir)
    new_host = {"BACKUP_AGE_IDENTITY_FILE": str(identity)}
    fetched = cluster.run("backup-offsite", "fetch-base", "latest", **new_host)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    fetched = cluster.run("backup-offsite", "fetch-wal", **new_host)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert (cluster.backup_dir / "wal" / "archive" / segment).exists()
    restored = cluster.run("restore", "--to", "latest", "--yes")
    assert restored.returncode == 0, restored.stdout + restored.stderr
    cluster.server.start()
    assert cluster.counts() == counts


def test_the_stacks_pg_hba_lets_the_sidecar_replicate_over_the_network_with_its_password() -> None:
    """postgres/pg_hba.conf on a real server, as the compose `tally_backup` role with its password. A socat
    relay connects from 127.0.0.3, standing for the backend network (the localhost lines are trust)."""
    conf = Path(tempfile.mkdtemp(prefix="tally-hba-"))
    conf.chmod(0o755)
    hba = conf / "pg_hba.conf"
    shutil.copy(BIN.parents[1] / "postgres" / "pg_hba.conf", hba)
    hba.chmod(0o644)
    server = PostgresServer.create(max_connections=20, extra_settings=(f"hba_file={hba}",))
    relay_port = free_port()
    relay = subprocess.Popen(
        [
            "socat",
            f"TCP-LISTEN:{relay_port},bind=127.0.0.1,reuseaddr,fork",
            f"TCP:127.0.0.1:{server.port},bind=127.0.0.3",
        ],
        start_new_session=True,
    )
    try:
        server.execute("CREATE ROLE tally_backup LOGIN REPLICATION PASSWORD 'sidecar-secret'")
        server.execute("CREATE ROLE visitor LOGIN REPLICATION PASSWORD 'other-secret'")

        def connect(user: str, password: str, replication: bool = True) -> subprocess.CompletedProcess[str]:
            dsn = f"host=127.0.0.1 port={relay_port} user={user} password={password} dbname=postgres"
            return subprocess.run(
                [str(server.bin_dir / "psql"), "-X", "-At", dsn + (" replication=true" if replication else "")]
                + ["-c", "IDENTIFY_SYSTEM" if replication else "SELECT inet_client_addr()"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

        wait_until(lambda: connect("tally_backup", "sidecar-secret", replication=False).returncode == 0, timeout=20)
        assert connect("tally_backup", "sidecar-secret", replication=False).stdout.strip() == "127.0.0.3"
        allowed = connect("tally_backup", "sidecar-secret")
        assert allowed.returncode == 0, allowed.stderr
        wrong_password = connect("tally_backup", "guess")
        assert wrong_password.returncode != 0 and "password authentication failed" in wrong_password.stderr
        other_role = connect("visitor", "other-secret")
        assert other_role.returncode != 0 and "no pg_hba.conf entry for replication" in other_role.stderr
    finally:
        stop_process(relay)  # type: ignore[arg-type]
        server.destroy()
        shutil.rmtree(conf, ignore_errors=True)
