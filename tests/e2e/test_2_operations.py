"""Operations on the running stack: backups, replica loss, scaling, a rolling deploy under load, down/up.

Runs after test_1_stack.py on the same stack; each test leaves the stack as it found it (2 healthy replicas).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.procs import wait_until
from loadtest.background import Load
from tests.e2e.engine import ENGINE, Stack, alert_in_log
from tests.e2e.test_1_stack import replica_visits, stats, visit_figure
from tests.stack.stackutil import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def delivered(stack: Stack, alertname: str, status: str = "firing") -> bool:
    return alert_in_log(stack.logs("alert-logger"), alertname, status)


def healthy_app_replicas(stack: Stack) -> int:
    return sum(1 for c in stack.ps() if c["Service"] == "app" and c["State"] == "running" and c["Health"] == "healthy")


# --- 5. backups ----------------------------------------------------------------------------------------------


def test_backup_verify_restore_round_trip(stack: Stack) -> None:
    stack.visit("backup-visitor", "--count", "3")
    at_backup = stats(stack)
    backup = stack.exec("backup", "backup", timeout=300)
    listing = stack.exec("backup", "backups").stdout
    assert listing.strip(), "backups lists nothing after a backup"
    stack.exec("backup", "verify", "latest", timeout=300)
    # Visits after the backup, which the restore must take back.
    stack.visit("after-backup", "--count", "4")
    assert stats(stack)["total_visits"] == at_backup["total_visits"] + 4
    stack.exec("backup", "restore", "latest", "--yes", timeout=600)
    restored = wait_until(lambda: stats(stack), timeout=60, interval=1, message="app answering after restore")
    assert (restored["total_visits"], restored["total_visitors"]) == (
        at_backup["total_visits"],
        at_backup["total_visitors"],
    ), backup.stdout


# --- 4. replica loss is paged --------------------------------------------------------------------------------


def test_losing_a_replica_is_delivered_as_an_alert(stack: Stack) -> None:
    victim = stack.container_ids("app")[0]
    stack.engine.docker("stop", victim, timeout=120)
    try:
        # Exit 0, not 137: PID 1 (gunicorn) drained and stopped within stop_grace_period on SIGTERM.
        assert stack.inspect(victim)["State"]["ExitCode"] == 0
        wait_until(
            lambda: delivered(stack, "AppReplicasBelowMinimum"),
            timeout=420,
            interval=5,
            message="AppReplicasBelowMinimum delivered to the alert logger",
        )
    finally:
        stack.engine.docker("start", victim)
        wait_until(lambda: healthy_app_replicas(stack) == 2, timeout=180, interval=2, message="replica back")


# --- 6. operations -------------------------------------------------------------------------------------------


def app_targets(stack: Stack) -> int:
    out = stack.exec("prometheus", "wget", "-q", "-O", "-", "http://127.0.0.1:9090/api/v1/targets?state=active").stdout
    targets = json.loads(out)["data"]["activeTargets"]
    return sum(1 for t in targets if t["labels"]["job"] == "tally-app" and t["health"] == "up")


def test_scale_to_four_replicas_and_back(stack: Stack) -> None:
    stack.compose("up", "-d", "--wait", "--scale", "app=4", "app", timeout=600)
    assert healthy_app_replicas(stack) == 4
    wait_until(lambda: app_targets(stack) == 4, timeout=120, interval=3, message="Prometheus scraping 4 replicas")
    before = replica_visits(stack)
    assert stack.visit("scaler", "--count", "80")["statuses"] == [200] * 80
    after = replica_visits(stack)
    assert len(after) == 4
    assert all(after[c] > before.get(c, 0) for c in after), (before, after)
    stack.compose("up", "-d", "--wait", "--scale", "app=2", "app", timeout=600)
    assert healthy_app_replicas(stack) == 2
    wait_until(lambda: app_targets(stack) == 2, timeout=120, interval=3, message="Prometheus back to 2 replicas")


def test_rolling_deploy_under_load_fails_and_loses_nothing(stack: Stack, tmp_path: Path) -> None:
    # A new image: the built one with another build number, so /version tells which one serves.
    new_image = "tally:e2e-next"
    stack.engine.run(
        str(ENGINE / "usr/bin/docker"),
        "build",
        "--quiet",
        "--tag",
        new_image,
        "-",
        input="FROM tally:local\nENV BUILD_NUMBER=7322\n",
        timeout=300,
    )
    old_ids = set(stack.container_ids("app"))
    before = stats(stack)
    load = Load.start(f"https://localhost:{stack.https_port}", tmp_path / "load", users=3, user_rps=2, insecure=True)
    try:
        deploy = stack.engine.run(
            "bash",
            str(REPO / "scripts" / "deploy.sh"),
            "--no-pull",
            new_image,
            timeout=900,
            check=False,
            env=stack.env
            | {
                "DOCKER": str(ENGINE / "usr/bin/docker"),
                "ENV_FILE": str(stack.env_file),
                "DEPLOY_STATE_DIR": str(tmp_path / "deploy-state"),
            },
        )
        # Some load on the new replicas too.
        settle = len(load.snapshot()) + 20
        wait_until(lambda: len(load.snapshot()) >= settle, timeout=60, message="load on the new replicas")
    finally:
        result = load.stop()
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    # On failure, Traefik's own account of each failed request (which replica, which error) says why.
    failures = [line for line in stack.logs("traefik").splitlines() if '"DownstreamStatus":5' in line]
    print("\n".join(["", "Traefik 5xx:", *failures[-10:], "Locust:", load.log()[-3000:]]))
    # Each old replica left Traefik's rotation (Traefik's own metrics said so) before it was stopped: without
    # that drain, Traefik could still dial a replica whose listener gunicorn had closed (a 502).
    assert deploy.stdout.count("out of Traefik's rotation") == 2, deploy.stdout + deploy.stderr
    assert result.failed == 0, (result.statuses(), failures[-10:], deploy.stdout[-3000:])
    assert result.visit_ok > 0
    # deploy.sh's own gate is real visits through Traefik too (GET / with the page, scripts/deploy.sh).
    gate_visits = sum(int(n) for n in re.findall(r"GET \S+: (\d+) x 200 with the page", deploy.stdout + deploy.stderr))
    assert gate_visits > 0
    assert stats(stack)["total_visits"] == before["total_visits"] + result.visit_ok + gate_visits
    new_ids = set(stack.container_ids("app"))
    assert len(new_ids) == 2 and not new_ids & old_ids
    for container in new_ids:
        assert stack.inspect(container)["Config"]["Image"] == new_image
    body = stack.engine.docker("exec", stack.client("solo"), "python", "/client.py", "--path", "/version").stdout
    assert "7322" in json.loads(body)["last_body"]


def secret_digest(stack: Stack) -> str:
    return stack.exec("app", "sha256sum", "/run/secrets/secret_key").stdout.split()[0]


def test_down_then_up_keeps_counts_and_secrets(stack: Stack) -> None:
    before, digest = stats(stack), secret_digest(stack)
    # Client containers hold the edge network open; `down` removes it.
    stack.drop_clients()
    stack.compose("down", "--timeout", "30", timeout=600)
    assert not stack.ps()
    up = stack.compose("up", "-d", "--wait", "--wait-timeout", "600", timeout=900, check=False)
    assert up.returncode == 0, up.stderr
    after = stats(stack)
    assert (after["total_visits"], after["total_visitors"]) == (before["total_visits"], before["total_visitors"])
    # The same secret key: returning visitors stay the same visitors.
    assert secret_digest(stack) == digest
    assert visit_figure(stack.visit("after-restart")["last_body"]) == 1
