"""scripts/deploy.sh against a fake `docker` on PATH (tests/cicd/fake_docker.py).

The fake simulates app replicas and their health; every call is logged, so the tests check the rollout
order (migrate -> add new -> wait healthy -> remove old, per replica) and the automatic rollback.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import REPO_ROOT
from tests.cicd.fake_docker import TRAEFIK_ID

pytestmark = pytest.mark.slow  # each test runs deploy.sh, which starts the fake `docker` (Python) many times

DEPLOY = REPO_ROOT / "scripts" / "deploy.sh"
FAKE = Path(__file__).with_name("fake_docker.py")

OLD = "registry.example.com:5000/tally/tally:1.2.0-build.50"
NEW = "registry.example.com:5000/tally/tally:1.3.0-build.57"


@dataclass
class Result:
    rc: int
    out: str
    err: str
    calls: list[dict[str, Any]]
    state: dict[str, Any]
    env_file: str
    workdir: Path


def old_container(n: int) -> dict[str, Any]:
    return {
        "id": f"old{n:03d}" + "e" * 58,
        "service": "app",
        "image": OLD,
        "status": "running",
        "plan": ["healthy"],
        "polls": 0,
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    docker = bindir / "docker"
    docker.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    docker.chmod(0o755)
    curl = bindir / "curl"
    curl.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" curl "$@"\n')
    curl.chmod(0o755)
    work = tmp_path / "srv"
    work.mkdir()
    env = work / ".env"
    env.write_text(f"DOMAIN=tally.example.org\nTALLY_IMAGE={OLD}\nUSER_NAME=ops\n")
    env.chmod(0o600)
    return tmp_path


def run_deploy(
    project: Path, *args: str, scenario: dict[str, Any] | None = None, replicas: int = 2, **env: str
) -> Result:
    state: dict[str, Any] = {"containers": [old_container(i + 1) for i in range(replicas)]}
    state.update(scenario or {})
    state_file = project / "state.json"
    log_file = project / "calls.jsonl"
    state_file.write_text(json.dumps(state))
    log_file.write_text("")
    full_env = {
        "PATH": f"{project / 'bin'}:{os.environ['PATH']}",
        "FAKE_DOCKER_STATE": str(state_file),
        "FAKE_DOCKER_LOG": str(log_file),
        "HEALTH_POLL_INTERVAL": "0.01",
        "HEALTH_TIMEOUT": "20",
        "HOME": str(project),
        **env,
    }
    proc = subprocess.run(
        ["bash", str(DEPLOY), *args],
        cwd=project / "srv",
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = [json.loads(line) for line in log_file.read_text().splitlines()]
    return Result(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        calls,
        json.loads(state_file.read_text()),
        (project / "srv" / ".env").read_text(),
        project / "srv",
    )


def events(r: Result) -> list[str]:
    """The calls reduced to a readable trace: 'pull', 'migrate', 'up', 'healthy <id>', 'stop <id>', ..."""
    out: list[str] = []
    for c in r.calls:
        a = c["argv"]
        if a[:2] == ["compose", "pull"]:
            out.append("pull")
        elif a[:2] == ["compose", "run"]:
            out.append("migrate" if a[-1] == "migrate" else f"run {a[-1]}")
        elif a[:2] == ["compose", "up"]:
            out.append(f"up {c['image_env']}")
        elif a[0] == "inspect" and c.get("answer") == "running/healthy":
            out.append(f"healthy {a[-1][:6]}")
        elif a[:2] == ["exec", "-i"] and "app.drain" in a:
            out.append(f"drain {a[2][:6]}")
        elif a[0] in ("stop", "rm"):
            out.append(f"{a[0]}{' -f' if '-f' in a else ''} {a[-1][:6]}")
    return out


def images_running(r: Result) -> list[str]:
    return [c["image"] for c in r.state["containers"] if c["status"] == "running"]


def env_image(r: Result) -> str:
    return [ln for ln in r.env_file.splitlines() if ln.startswith("TALLY_IMAGE=")][-1].split("=", 1)[1]


def test_rolling_order_per_replica(project: Path) -> None:
    r = run_deploy(project, NEW)
    assert r.rc == 0, r.err
    assert events(r) == [
        "pull",
        "migrate",
        f"up {NEW}",
        "healthy new001",
        "drain old001",
        "stop old001",
        "rm old001",
        f"up {NEW}",
        "healthy new002",
        "drain old002",
        "stop old002",
        "rm old002",
    ]
    # Compose interpolates the new image in every compose call, migrate included.
    first_pull = next(i for i, c in enumerate(r.calls) if c["argv"][:2] == ["compose", "pull"])
    assert all(c["image_env"] == NEW for c in r.calls[first_pull:] if c["argv"][0] == "compose")
    ups = [c["argv"] for c in r.calls if c["argv"][:2] == ["compose", "up"]]
    assert all("--scale" in a and "app=3" in a and "--no-recreate" in a and "--no-deps" in a for a in ups)
    assert images_running(r) == [NEW, NEW]
    assert env_image(r) == NEW
    assert "DOMAIN=tally.example.org" in r.env_file and "USER_NAME=ops" in r.env_file
    assert stat.S_IMODE((r.workdir / ".env").stat().st_mode) == 0o600
    assert (r.workdir / ".deploy" / "previous-image").read_text().strip() == OLD
    assert "[1/2]" in r.out and "[2/2]" in r.out and "deploy complete" in r.out


def test_waits_through_starting_before_removing_old(project: Path) -> None:
    r = run_deploy(project, NEW, scenario={"default_plan": ["starting", "starting", "starting", "healthy"]})
    assert r.rc == 0, r.err
    trace = [(c["argv"][0], c["argv"][-1][:6], c.get("answer")) for c in r.calls]
    first_stop = trace.index(("stop", "old001", None))
    # Health polls only (the drain's address lookup of new001 answers no health).
    polls = [t for t in trace[:first_stop] if t[0] == "inspect" and t[1] == "new001" and t[2] is not None]
    assert [p[2] for p in polls] == ["running/starting"] * 3 + ["running/healthy"]


def test_rollback_when_second_replica_unhealthy(project: Path) -> None:
    scenario = {"plans": [["starting", "healthy"], ["starting", "unhealthy"]], "image_plans": {OLD: ["healthy"]}}
    r = run_deploy(project, NEW, scenario=scenario)
    assert r.rc != 0
    assert "ROLLBACK" in r.err
    trace = events(r)
    # The unhealthy one never carried traffic: removed at once. The promoted one is swapped back health-gated.
    assert trace[:8] == [
        "pull", "migrate", f"up {NEW}", "healthy new001", "drain old001", "stop old001", "rm old001", f"up {NEW}"
    ]  # fmt: skip
    assert "stop old002" not in trace and "drain old002" not in trace
    # The promoted replica carries traffic: drained like any other before it goes.
    assert trace[8:] == ["rm -f new002", f"up {OLD}", "healthy new003", "drain new001", "stop new001", "rm new001"]
    assert images_running(r) == [OLD, OLD]
    assert env_image(r) == OLD


def test_rollback_on_health_timeout_leaves_old_replicas_untouched(project: Path) -> None:
    r = run_deploy(project, NEW, scenario={"default_plan": ["starting"]}, HEALTH_TIMEOUT="1")
    assert r.rc != 0
    assert "not healthy within 1s" in r.err
    trace = events(r)
    assert not any(t.startswith("stop old") or t.startswith("rm old") for t in trace)
    assert trace[-1] == "rm -f new001"
    assert [c["id"][:6] for c in r.state["containers"]] == ["old001", "old002"]
    assert env_image(r) == OLD


def test_exited_replica_fails_fast(project: Path) -> None:
    r = run_deploy(project, NEW, scenario={"plans": [["starting", "exited"]]}, HEALTH_TIMEOUT="600")
    assert r.rc != 0
    assert "is exited" in r.err
    assert images_running(r) == [OLD, OLD]


def test_failed_migration_replaces_nothing(project: Path) -> None:
    r = run_deploy(project, NEW, scenario={"migrate_exit": 1})
    assert r.rc != 0
    assert "migrations failed" in r.err
    assert events(r) == ["pull", "migrate"]
    assert env_image(r) == OLD
    assert images_running(r) == [OLD, OLD]


def test_tag_only_argument_keeps_repository(project: Path) -> None:
    r = run_deploy(project, "1.3.0-build.57")
    assert r.rc == 0, r.err
    assert env_image(r) == NEW
    assert images_running(r) == [NEW, NEW]


def test_manual_rollback_skips_migrations(project: Path) -> None:
    first = run_deploy(project, NEW)
    assert first.rc == 0, first.err
    # Second run starts from replicas that run NEW; --rollback must go back to OLD without migrating.
    state = {"containers": [dict(old_container(i + 1), image=NEW) for i in range(2)]}
    r = run_deploy(project, "--rollback", scenario=state)
    assert r.rc == 0, r.err
    assert "migrate" not in events(r)
    assert images_running(r) == [OLD, OLD]
    assert env_image(r) == OLD
    assert (r.workdir / ".deploy" / "previous-image").read_text().strip() == NEW


def test_first_deploy_without_running_replicas(project: Path) -> None:
    r = run_deploy(project, NEW, replicas=0)
    assert r.rc == 0, r.err
    assert events(r) == ["pull", "migrate", f"up {NEW}", "healthy new001", "healthy new002"]
    assert images_running(r) == [NEW, NEW]


def test_usage_errors(project: Path) -> None:
    assert run_deploy(project).rc == 2
    assert run_deploy(project, "a", "b").rc == 2
    # The feed alone (drills/compose.py runs it; tests/drills/test_units.py) takes exactly one container.
    assert run_deploy(project, "--metrics-feed").rc == 2
    assert run_deploy(project, "--metrics-feed", "a", "b").rc == 2
    assert run_deploy(project, "a", "--metrics-feed", "b").rc == 2


def test_shellcheck_clean() -> None:
    proc = subprocess.run(
        ["shellcheck", "--severity=style", str(DEPLOY), str(REPO_ROOT / "scripts" / "version.sh")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_pull_for_locally_built_images(project: Path) -> None:
    r = run_deploy(project, "--no-pull", "tally:local")
    assert r.rc == 0, r.err
    assert events(r)[:2] == ["migrate", "up tally:local"]
    assert images_running(r) == ["tally:local", "tally:local"]


def test_concurrent_deploy_is_refused(project: Path) -> None:
    state_dir = project / "srv" / ".deploy"
    state_dir.mkdir()
    with (state_dir / "lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_deploy(project, NEW)
    assert r.rc != 0
    assert "another deploy" in r.err
    assert r.calls == []
    assert env_image(r) == OLD


def test_replica_not_ready_is_never_promoted(project: Path) -> None:
    """Docker says healthy (liveness), but /readyz never answers 200: the old replicas stay."""
    # Healthy at the first look, so the 1 s timeout is spent on /readyz alone.
    r = run_deploy(project, NEW, scenario={"unready_images": [NEW], "default_plan": ["healthy"]}, HEALTH_TIMEOUT="1")
    assert r.rc != 0
    assert "/readyz not 200" in r.err and "ROLLBACK" in r.err
    assert not any(t.startswith(("stop old", "rm old")) for t in events(r))
    assert images_running(r) == [OLD, OLD]
    assert env_image(r) == OLD


def test_release_answering_500_on_the_page_is_rolled_back(project: Path) -> None:
    """Healthy and ready, but GET / through Traefik fails: every replica goes back to the old image."""
    scenario = {"bad_page_images": [NEW], "image_plans": {OLD: ["healthy"]}}
    # A short page timeout; the rollback's own health waits keep the generous HEALTH_TIMEOUT.
    r = run_deploy(project, NEW, scenario=scenario, PAGE_TIMEOUT="1")
    assert r.rc != 0
    assert "GET https://tally.example.org/ did not answer the page" in r.err
    assert "rollback complete" in r.err
    assert images_running(r) == [OLD, OLD]
    assert env_image(r) == OLD
    pages = [c["argv"] for c in r.calls if c["argv"][0] == "curl"]
    assert pages and all("tally.example.org:443:127.0.0.1:443" in a for a in pages)


def test_good_release_passes_the_page_check_after_every_step(project: Path) -> None:
    r = run_deploy(project, NEW)
    assert r.rc == 0, r.err
    assert r.out.count("x 200 with the page") == 2
    # Each step asked the page 3 x replicas times, all through Traefik's published port.
    assert len([c for c in r.calls if c["argv"][0] == "curl"]) == 2 * 6


def test_failing_compose_ps_stops_before_anything_changes(project: Path) -> None:
    """The replica list is read without process substitution, so set -e sees a failing `compose ps`."""
    r = run_deploy(project, NEW, scenario={"ps_exit": 1})
    assert r.rc != 0
    assert "cannot list the running app replicas" in r.err
    assert events(r) == []
    assert env_image(r) == OLD
    assert images_running(r) == [OLD, OLD]


def test_old_replica_is_drained_from_traefik_before_it_stops(project: Path) -> None:
    up = 'traefik_service_server_up{service="tally@docker",url="http://172.31.240.10:8000"} 1\n'
    r = run_deploy(
        project,
        NEW,
        scenario={"traefik_metrics": up},
        DRAIN_TIMEOUT="7",
        TRAEFIK_METRICS_URL="http://127.0.0.1:9100/metrics",
    )
    assert r.rc == 0, r.err
    drains = [c["argv"] for c in r.calls if "app.drain" in c["argv"]]
    assert len(drains) == 2
    # Run inside the old replica, with every address it has (Traefik's metrics name the server by one of them),
    # after Traefik reports its successor (new001, the third container) up.
    assert drains[0][:3] == ["exec", "-i", "old001" + "e" * 58]
    assert drains[0][3:] == [
        "python", "-m", "app.drain", "--metrics-url", "-", "--timeout", "7",
        "--after-up", "172.31.240.12", "--after-up", "172.31.241.12", "172.31.240.10", "172.31.241.10",
    ]  # fmt: skip
    assert "out of Traefik's rotation after 1.2s" in r.out
    # The replica does not open Traefik's metrics port: they are read inside Traefik's container and fed to it.
    reads = [c["argv"] for c in r.calls if c["argv"][:2] == ["exec", TRAEFIK_ID]]
    assert reads and all(a[2:] == ["wget", "-q", "-T", "2", "-O", "-", "http://127.0.0.1:9100/metrics"] for a in reads)
    assert all(c["drain_feed"] == up for c in r.calls if "app.drain" in c["argv"])


def test_without_a_running_traefik_the_replica_is_stopped_undrained(project: Path) -> None:
    r = run_deploy(project, NEW, scenario={"traefik_down": True})
    assert r.rc == 0, r.err
    assert "no running traefik container to read the drain from" in r.err
    assert not any("app.drain" in c["argv"] for c in r.calls)
    assert images_running(r) == [NEW, NEW]


@pytest.mark.parametrize("drain_exit", [3, 4])
def test_a_replica_that_cannot_be_drained_is_still_replaced(project: Path, drain_exit: int) -> None:
    """An old image without the drain (3) or a Traefik that does not confirm (4): the plain graceful stop."""
    r = run_deploy(project, NEW, scenario={"drain_exit": drain_exit})
    assert r.rc == 0, r.err
    assert f"not drained (exit {drain_exit}" in r.err and "stopping it anyway" in r.err
    trace = events(r)
    assert trace.index("drain old001") < trace.index("stop old001")
    assert images_running(r) == [NEW, NEW]
