"""The same stack on a one-node Docker Swarm (swarm/render.py, docs/scaling.md), on the session's engine.

Runs last in the package: its fixture removes whatever the compose stack left, joins a one-node swarm,
deploys the rendered stack, and leaves the swarm (removing everything) at the end, so the engine's data root
is as clean as it found it. Grafana and cAdvisor are left out as in the compose e2e (no image here).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml  # type: ignore[import-untyped]

from harness.observability import write_secrets
from harness.procs import free_port, wait_until
from loadtest.background import Load
from tests.e2e import client
from tests.e2e.engine import (
    BRIDGE_ADDRESS,
    ENGINE,
    OVERRIDE,
    Engine,
    alert_in_log,
    image_refs,
    start_worker,
    stop_worker,
)
from tests.stack.stackutil import REPO, compose_binary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

NAME = "tally"
DEPLOY_TIMEOUT = 300


@dataclass
class Swarm:
    engine: Engine
    out: Path
    https_port: int
    render_env: dict[str, str]
    workers: list[Engine] = field(default_factory=list)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return self.engine.docker(*args, timeout=timeout, check=check).stdout

    def render(self, image: str) -> dict[str, Any]:
        script = REPO / "swarm/render.py"
        env = self.render_env | {"TALLY_IMAGE": image}
        self.engine.run(sys.executable, str(script), "--out", str(self.out), "-f", str(OVERRIDE), env=env)
        stack: dict[str, Any] = yaml.safe_load((self.out / "tally-stack.yaml").read_text())
        return stack

    def deploy(self, image: str = "tally:local") -> None:
        self.render(image)
        # Local images only: no registry to resolve digests against.
        self.docker("stack", "deploy", "--resolve-image", "never", "-c", str(self.out / "tally-stack.yaml"), NAME)

    def tasks(self, service: str) -> list[dict[str, Any]]:
        out = self.docker("service", "ps", f"{NAME}_{service}", "--format", "json", "--no-trunc")
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def healthy_containers(self, service: str, nodes: list[Engine] | None = None) -> list[str]:
        """On the given nodes; by default on every node (the manager's engine and the workers')."""
        filters = ["--filter", f"label=com.docker.swarm.service.name={NAME}_{service}", "--filter", "health=healthy"]
        found = []
        for node in nodes if nodes is not None else [self.engine, *self.workers]:
            found += node.docker("ps", "-q", *filters).stdout.split()
        return found

    def container(self, service: str) -> str:
        ids = self.docker("ps", "-q", "--filter", f"label=com.docker.swarm.service.name={NAME}_{service}").split()
        assert ids, f"no running task of {service}"
        return ids[0]

    def service(self, service: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.docker("service", "inspect", f"{NAME}_{service}"))
        return data[0]

    def get(self, path: str = "/") -> tuple[int, str]:
        try:
            status, _, body = client.get("127.0.0.1", self.https_port, path, timeout=5)
        except OSError as exc:
            return -1, repr(exc)
        return status, body

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/api/stats")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    def prometheus_api(self, path: str) -> Any:
        prometheus = self.container("prometheus")
        out = self.docker("exec", prometheus, "wget", "-q", "-O", "-", f"http://127.0.0.1:9090/api/v1/{path}")
        return json.loads(out)["data"]

    def prometheus_targets(self, job: str) -> int:
        targets = self.prometheus_api("targets")["activeTargets"]
        return sum(1 for t in targets if t["labels"]["job"] == job and t["health"] == "up")

    def delivered(self, alertname: str) -> bool:
        logs = self.engine.docker("service", "logs", "--raw", f"{NAME}_alert-logger", check=False).stdout
        return alert_in_log(logs, alertname)

    def wait_app(self, replicas: int, image: str) -> None:
        def ready() -> bool:
            running = [
                t
                for t in self.tasks("app")
                if t["CurrentState"].startswith("Running") and t["DesiredState"] == "Running"
            ]
            return (
                len(running) == replicas
                and all(t["Image"].split("@")[0] == image for t in running)
                and len(self.healthy_containers("app")) == replicas
            )

        wait_until(ready, timeout=DEPLOY_TIMEOUT, interval=2, message=f"{replicas} healthy app tasks of {image}")


def clean(engine: Engine) -> None:
    engine.docker("swarm", "leave", "--force", check=False)
    leftovers = engine.docker("ps", "-aq").stdout.split()
    if leftovers:
        engine.docker("rm", "-f", "-v", *leftovers, timeout=300)
    engine.docker("volume", "prune", "--all", "--force")
    engine.docker("network", "prune", "--force")


@pytest.fixture(scope="module")
def swarm(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    # The compose stack (if this session ran it) goes first: one stack at a time on two cores.
    clean(engine)
    work = tmp_path_factory.mktemp("swarm")
    empty_env = work / "empty.env"
    empty_env.write_text("")
    https_port = free_port()
    render_env = engine.env | {
        # A developer's .env is never read.
        "COMPOSE": f"{compose_binary()} --env-file {empty_env}",
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(https_port),
        "TALLY_E2E_DOCKER_SOCKET": str(engine.socket),
        "TALLY_E2E_SECRETS_IMPORT": str(work),
    }
    try:
        # The node's address is where Prometheus finds the engine's metrics (engine.py: docker0, which the
        # containers reach as a manager's private address is reached in production).
        engine.docker("swarm", "init", "--advertise-addr", BRIDGE_ADDRESS, "--listen-addr", f"{BRIDGE_ADDRESS}:2377")
        node = engine.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        engine.docker("node", "update", "--label-add", "tally.db=true", "--label-add", "tally.monitoring=true", node)
        swarm = Swarm(engine, work / "stack", https_port, render_env)
        # What an operator does once (docs/scaling.md): one Swarm secret per name the stack lists, made as
        # secrets-init makes them (blackbox_web_config is derived from blackbox_password).
        secrets_dir = write_secrets(work / "secrets")
        for name in swarm.render("tally:local")["secrets"]:
            engine.run(str(ENGINE / "usr/bin/docker"), "secret", "create", name, str(secrets_dir / name))
        swarm.deploy()
        swarm.wait_app(2, "tally:local")
        try:
            wait_until(lambda: swarm.get()[0] == 200, timeout=120, interval=2, message="the page through Traefik")
        except Exception:
            print("page:", swarm.get())
            for service in ("traefik", "socket-proxy", "migrate", "app"):
                print(service, swarm.docker("service", "ps", "--no-trunc", f"{NAME}_{service}", check=False))
                logs = engine.docker("service", "logs", "--tail", "15", f"{NAME}_{service}", check=False)
                print(logs.stdout[-3000:], logs.stderr[-3000:])
            raise
        yield swarm
    finally:
        print(engine.docker("service", "ls", check=False).stdout)
        engine.docker("stack", "rm", NAME, check=False)
        clean(engine)


def test_visits_count_through_traefik_and_prometheus_finds_every_task(swarm: Swarm) -> None:
    before = swarm.stats()["total_visits"]
    for _ in range(5):
        status, body = swarm.get()
        assert status == 200, body
    assert swarm.stats()["total_visits"] == before + 5
    wait_until(lambda: swarm.prometheus_targets("tally-app") == 2, timeout=90, interval=3, message="2 app targets")
    wait_until(lambda: swarm.prometheus_targets("docker-engine") == 1, timeout=90, interval=3, message="the engine")
    # blackbox admits Prometheus: the blackbox_password and blackbox_web_config Swarm secrets agree.
    wait_until(lambda: swarm.prometheus_targets("blackbox-https") == 1, timeout=90, interval=3, message="blackbox")


def failed_tasks(swarm: Swarm) -> int | None:
    """The managers' count of failed tasks as Prometheus last scraped it (None before the first scrape)."""
    result = swarm.prometheus_api("query?query=" + quote('max(swarm_manager_tasks_total{state="failed"})'))["result"]
    return int(float(result[0]["value"][1])) if result else None


def test_a_killed_task_is_replaced_and_alerted(swarm: Swarm) -> None:
    # Before the rolling update and the broken image, which fail tasks of their own. The alert compares with
    # the count before the kill, so Prometheus must have one.
    def scraped() -> tuple[int] | None:
        count = failed_tasks(swarm)
        return None if count is None else (count,)  # a tuple: a count of 0 is an answer

    (before,) = wait_until(scraped, timeout=90, interval=3, message="the failed-task count")
    image = app_image(swarm)
    victims = swarm.healthy_containers("app")
    assert len(victims) == 2
    swarm.docker("kill", victims[0])

    def replaced() -> bool:
        healthy = swarm.healthy_containers("app")
        return len(healthy) == 2 and victims[0] not in healthy

    wait_until(replaced, timeout=DEPLOY_TIMEOUT, interval=2, message="a new task for the killed one")
    swarm.wait_app(2, image)
    assert swarm.get()[0] == 200
    wait_until(lambda: (failed_tasks(swarm) or 0) > before, timeout=90, interval=3, message="the kill counted")
    wait_until(lambda: swarm.delivered("SwarmTaskFailed"), timeout=240, interval=5, message="SwarmTaskFailed delivered")


def app_image(swarm: Swarm) -> str:
    image: str = swarm.service("app")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"]
    return image.split("@")[0]


def update_state(swarm: Swarm) -> str:
    state: str = (swarm.service("app").get("UpdateStatus") or {}).get("State", "")
    return state


def build(swarm: Swarm, tag: str, dockerfile: str) -> None:
    swarm.engine.run(str(ENGINE / "usr/bin/docker"), "build", "--quiet", "--tag", tag, "-", input=dockerfile)


def test_rolling_update_under_load_fails_nothing_and_loses_nothing(swarm: Swarm, tmp_path: Path) -> None:
    # The built image with another build number, so /version tells which one serves.
    new_image = "tally:e2e-next"
    build(swarm, new_image, "FROM tally:local\nENV BUILD_NUMBER=7322\n")
    before = swarm.stats()["total_visits"]
    load = Load.start(f"https://localhost:{swarm.https_port}", tmp_path / "load", users=3, user_rps=2, insecure=True)
    try:
        # The operator's path: render with the new TALLY_IMAGE, deploy the stack again.
        swarm.deploy(new_image)
        wait_until(lambda: update_state(swarm) == "completed", timeout=DEPLOY_TIMEOUT, interval=2, message="update")
        swarm.wait_app(2, new_image)
        settle = len(load.snapshot()) + 20
        wait_until(lambda: len(load.snapshot()) >= settle, timeout=60, message="load on the new tasks")
    finally:
        result = load.stop()
    print("Locust:", load.log()[-2000:])
    assert result.failed == 0, result.statuses()
    assert result.visit_ok > 0
    assert swarm.stats()["total_visits"] == before + result.visit_ok
    status, body = swarm.get("/version")
    assert status == 200 and "7322" in body, body


def test_a_broken_image_is_rolled_back_automatically(swarm: Swarm) -> None:
    good = app_image(swarm)
    # Starts, never becomes healthy: exits at once.
    build(swarm, "tally:e2e-broken", 'FROM tally:local\nENTRYPOINT []\nCMD ["python", "-c", "raise SystemExit(3)"]\n')
    swarm.docker("service", "update", "--detach", "--no-resolve-image", "--image", "tally:e2e-broken", f"{NAME}_app")
    wait_until(
        lambda: update_state(swarm) == "rollback_completed", timeout=DEPLOY_TIMEOUT, interval=2, message="rollback"
    )
    assert app_image(swarm) == good
    swarm.wait_app(2, good)
    before = swarm.stats()["total_visits"]
    assert swarm.get()[0] == 200
    assert swarm.stats()["total_visits"] == before + 1


def node_state(swarm: Swarm, node: str) -> str:
    return swarm.docker("node", "inspect", node, "--format", "{{.Status.State}}").strip()


def test_a_lost_node_s_replicas_move_and_visits_keep_counting(swarm: Swarm, tmp_path: Path) -> None:
    """A second host joins as a worker, the third replica lands on it; then it drops off the network under load."""
    image = app_image(swarm)
    # What runs on a worker: app replicas, and node-exporter (global).
    worker = start_worker(swarm.engine, [image, image_refs()["node-exporter"]])
    load: Load | None = None
    node = ""
    try:
        token = swarm.docker("swarm", "join-token", "-q", "worker").strip()
        worker.engine.docker(
            "swarm", "join", "--token", token, "--advertise-addr", worker.address, f"{BRIDGE_ADDRESS}:2377"
        )
        node = worker.engine.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip()
        swarm.workers.append(worker.engine)
        # Scale out: the spread preference puts the new replica on the node that has none.
        swarm.docker("service", "scale", "--detach", f"{NAME}_app=3")
        swarm.wait_app(3, image)
        assert len(swarm.healthy_containers("app", [worker.engine])) == 1
        # Prometheus on the manager scrapes the worker's replica and node-exporter across the overlays.
        wait_until(lambda: swarm.prometheus_targets("tally-app") == 3, timeout=90, interval=3, message="3 app targets")
        wait_until(lambda: swarm.prometheus_targets("node") == 2, timeout=90, interval=3, message="2 node targets")
        before = swarm.stats()["total_visits"]
        load = Load.start(
            f"https://localhost:{swarm.https_port}", tmp_path / "load", users=3, user_rps=2, insecure=True
        )
        wait_until(lambda: len(load.snapshot()) >= 20, timeout=60, message="load on three replicas")
        worker.cut()
        wait_until(lambda: node_state(swarm, node) == "down", timeout=120, interval=2, message="the worker down")
        # Its replica is rescheduled on the manager, the one node left.
        wait_until(
            lambda: len(swarm.healthy_containers("app", [swarm.engine])) == 3,
            timeout=DEPLOY_TIMEOUT,
            interval=2,
            message="3 healthy replicas on the manager",
        )
        moved = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) >= moved + 20, timeout=60, message="load after the move")
        result = load.stop()
        load = None
        print("Locust:", result.statuses())
        # Requests Traefik had sent to the lost replica may fail (no answer: 504; cut mid-way: 502); every
        # acknowledged visit is counted, once, and the requests after the move are served.
        assert set(result.statuses()) <= {200, 502, 504}, result.statuses()
        assert swarm.stats()["total_visits"] == before + result.visit_ok
        assert all(r.ok for r in result.requests[moved:]), result.statuses()

        def alerting() -> bool:
            alerts = swarm.prometheus_api("alerts")["alerts"]
            return any(a["labels"]["alertname"] == "SwarmNodeDown" for a in alerts)

        # Pending (its `for:` is 2 minutes): the managers' count reached the rule.
        wait_until(alerting, timeout=90, interval=3, message="SwarmNodeDown pending")
    finally:
        if load is not None:
            load.stop()
        if worker.engine in swarm.workers:
            swarm.workers.remove(worker.engine)
        stop_worker(worker)
        if node:
            swarm.docker("node", "rm", "--force", node, check=False)
    swarm.docker("service", "scale", "--detach", f"{NAME}_app=2")
    swarm.wait_app(2, image)
