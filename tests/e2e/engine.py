"""A private Docker Engine for the end-to-end suite, and the stack on it.

dockerd comes from scripts/install-docker-engine.sh (Debian trixie's docker.io, unpacked under
/opt/tally-docker). It runs with its own exec root, API socket, pid file and (empty) daemon config under a
temporary directory, and is stopped by PID. Its data root is a cache directory so the images built by
build-images.sh survive between runs on one machine; a lock keeps two sessions off it, and whatever a
crashed session left (containers, volumes, networks) is removed when the engine starts, with the images a
rebuild replaced and build cache beyond 4 GB.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from harness.procs import free_port, start_logged, wait_until
from swarm.render import ENGINE_METRICS_PORT
from tests.stack.stackutil import REPO, compose_binary, render

DOCKER_HOME = Path(os.environ.get("TALLY_DOCKER_HOME", "/opt/tally-docker"))
ENGINE = DOCKER_HOME / "engine"
CACHE = Path(os.environ.get("TALLY_E2E_CACHE", "/var/cache/tally-e2e"))
E2E = Path(__file__).resolve().parent
OVERRIDE = E2E / "compose.e2e.yaml"
# docker0's address (dockerd's usual default, fixed here because the metrics listener binds it).
BRIDGE_ADDRESS = "172.17.0.1"
# Services the e2e cannot run: no image of them can be had without a registry (docs/container-testing.md).
LEFT_OUT = frozenset({"cadvisor"})
# Build args of the app image (fixed, so a warm build is a full cache hit); /version must show them.
BUILD_NUMBER = "7321"
GIT_COMMIT = "5a0c0ffee5a0c0ffee5a0c0ffee5a0c0ffee5a0c"


def alert_in_log(log: str, alertname: str, status: str = "firing") -> bool:
    """Whether the alert logger's output (one webhook payload per JSON line, alertmanager/webhook_logger.py)
    holds a notification of ``alertname`` in ``status``; lines that are not JSON are the server's own."""
    for line in log.splitlines():
        try:
            record: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        for alert in record.get("alerts") or []:
            if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                return True
    return False


@dataclass
class Engine:
    root: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    # The session's engine holds the cache's lock and made docker0; a worker node (start_worker) neither.
    lock: TextIO | None = None
    made_bridge: bool = False

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    def run(
        self, *args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, env=env or self.env, capture_output=True, text=True, timeout=timeout, check=False, cwd=REPO, **kw
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(ENGINE / "usr/bin/docker"), *args, timeout=timeout, check=check)


def start_engine() -> Engine:
    dockerd = ENGINE / "usr/sbin/dockerd"
    if not dockerd.is_file():
        raise AssertionError(f"no Docker Engine at {ENGINE}; install it: scripts/install-docker-engine.sh (as root)")
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = (CACHE / "engine.lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise AssertionError(f"another e2e session holds {CACHE}/engine.lock") from None
    # Short path: containerd's sockets live under the exec root and unix socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="tally-e2e-", dir="/tmp"))
    plugins = root / "config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(compose_binary())
    (plugins / "docker-buildx").symlink_to(ENGINE / "usr/libexec/docker/cli-plugins/docker-buildx")
    (root / "daemon.json").write_text("{}\n")
    env = {
        "PATH": f"{ENGINE / 'usr/sbin'}:{ENGINE / 'usr/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": os.environ.get("HOME", "/root"),
        "DOCKER_HOST": f"unix://{root / 'docker.sock'}",
        "DOCKER_CONFIG": str(root / "config"),
        "LANG": "C.UTF-8",
    }
    had_bridge = Path("/sys/class/net/docker0").exists()
    process = start_logged(
        "dockerd",
        [
            str(dockerd),
            f"--data-root={CACHE / 'docker'}",
            f"--exec-root={root / 'exec'}",
            f"--host={env['DOCKER_HOST']}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--config-file={root / 'daemon.json'}",
            # docker0 gives the host an address that containers reach and nothing outside the machine does:
            # the Swarm test advertises its node there, and Prometheus scrapes the engine's metrics on it as
            # it scrapes a manager's private address in production (docs/scaling.md, "Monitoring the swarm").
            f"--bip={BRIDGE_ADDRESS}/16",
            f"--metrics-addr={BRIDGE_ADDRESS}:{ENGINE_METRICS_PORT}",
        ],
        root / "dockerd.log",
        env=env,
        ready=None,  # awaited below: stop_engine also cleans up what a half-started engine left
    )
    engine = Engine(root, process, env, lock, made_bridge=not had_bridge)
    try:
        wait_until(
            lambda: process.poll() is None and engine.docker("info", check=False, timeout=10).returncode == 0,
            timeout=90,
            interval=0.5,
            message="dockerd to answer",
        )
        leftovers = engine.docker("ps", "-aq").stdout.split()
        if leftovers:
            engine.docker("rm", "-f", "-v", *leftovers, timeout=300)
        engine.docker("volume", "prune", "--all", "--force")
        engine.docker("network", "prune", "--force")
        # Images a rebuild untagged and the build cache: tens of GB after a day of runs on one machine.
        engine.docker("image", "prune", "--force", timeout=300)
        engine.docker("builder", "prune", "--force", "--keep-storage", "4GB", timeout=300)
    except BaseException:
        stop_engine(engine)
        raise
    return engine


def stop_engine(engine: Engine) -> None:
    """SIGTERM to dockerd's PID (it stops its containers and its containerd), SIGKILL if it hangs."""
    process = engine.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    # Anything dockerd left mounted under its exec root goes before the directory does.
    with open("/proc/self/mounts") as mounts:
        left = [line.split()[1] for line in mounts if line.split()[1].startswith(str(engine.root))]
    for mountpoint in sorted(left, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], check=False)
    shutil.rmtree(engine.root, ignore_errors=True)
    if engine.made_bridge:
        # dockerd leaves its bridge behind; the host goes back to how the session found it.
        subprocess.run(["ip", "link", "delete", "docker0"], check=False, capture_output=True)
    if engine.lock is not None:
        fcntl.flock(engine.lock, fcntl.LOCK_UN)
        engine.lock.close()


@dataclass
class Worker:
    """A second Docker host: its own dockerd in a network namespace of the test's, cabled to docker0."""

    engine: Engine
    netns: str
    address: str
    link: str  # its end of the cable, inside the namespace
    outside: str  # the other end, on docker0

    def cut(self) -> None:
        """The host drops off the network as a crashed or partitioned server does: no goodbye to anyone."""
        subprocess.run(["ip", "-n", self.netns, "link", "set", self.link, "down"], check=True)


def start_worker(manager: Engine, images: Sequence[str], name: str = "w1", host: int = 254) -> Worker:
    """dockerd in the network namespace tally-e2e-<name>, at 172.17.255.<host> on docker0 beside the
    manager, with `images` loaded from the manager (no registry to pull from). Unlike a second server it
    shares the kernel, the filesystem and the cgroup tree; its network, Docker state and containers are its own.
    """
    netns, address = f"tally-e2e-{name}", f"{BRIDGE_ADDRESS.rsplit('.', 2)[0]}.255.{host}"
    outside, inside = f"tally-{name}-h", f"tally-{name}-n"
    root = Path(tempfile.mkdtemp(prefix=f"tally-{name}-", dir="/tmp"))
    (root / "daemon.json").write_text("{}\n")
    env = manager.env | {"DOCKER_HOST": f"unix://{root / 'docker.sock'}"}
    steps = [
        ["ip", "netns", "add", netns],
        ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside, "netns", netns],
        ["ip", "link", "set", outside, "master", "docker0", "up"],
        ["ip", "-n", netns, "addr", "add", f"{address}/16", "dev", inside],
        ["ip", "-n", netns, "link", "set", inside, "up"],
        ["ip", "-n", netns, "link", "set", "lo", "up"],
    ]
    process: subprocess.Popen[bytes] | None = None
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        # nsenter, not `ip netns exec`: that one also remounts /sys, hiding the cgroup mounts dockerd needs.
        argv = [
            "nsenter",
            f"--net=/run/netns/{netns}",
            str(ENGINE / "usr/sbin/dockerd"),
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--host={env['DOCKER_HOST']}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--config-file={root / 'daemon.json'}",
            "--bridge=none",
        ]
        process = start_logged(f"dockerd {name}", argv, root / "dockerd.log", env=env, ready=None)
        worker = Worker(Engine(root, process, env), netns, address, inside, outside)
        wait_until(
            lambda: process.poll() is None and worker.engine.docker("info", check=False, timeout=10).returncode == 0,
            timeout=90,
            interval=0.5,
            message=f"dockerd {name} to answer",
        )
        save = subprocess.Popen(
            [str(ENGINE / "usr/bin/docker"), "save", *images], env=manager.env, stdout=subprocess.PIPE
        )
        worker.engine.run(str(ENGINE / "usr/bin/docker"), "load", "--quiet", stdin=save.stdout, timeout=300)
        assert save.wait(timeout=60) == 0, f"docker save {images} failed"
        return worker
    except BaseException:
        if process is not None:
            stop_engine(Engine(root, process, env))
        remove_netns(netns, outside)
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_worker(worker: Worker) -> None:
    stop_engine(worker.engine)
    remove_netns(worker.netns, worker.outside)


def remove_netns(netns: str, outside: str) -> None:
    """Whatever still runs in the namespace (dockerd stopped its containers), then the namespace and cable."""
    pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False).stdout
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
    subprocess.run(["ip", "link", "delete", outside], check=False, capture_output=True)


def image_refs() -> dict[str, str]:
    model = render(files=(REPO / "compose.yaml",))
    return {name: svc["image"] for name, svc in model["services"].items() if name not in LEFT_OUT}


def build_images(engine: Engine) -> float:
    """Runs build-images.sh; returns its duration in seconds (printed by the fixture, never asserted)."""
    refs = engine.root / "image-refs"
    refs.write_text("".join(f"{name}={ref}\n" for name, ref in sorted(image_refs().items())))
    started = time.monotonic()
    env = engine.env | {"TALLY_E2E_BUILD_NUMBER": BUILD_NUMBER, "TALLY_E2E_GIT_COMMIT": GIT_COMMIT}
    result = engine.run("bash", str(E2E / "build-images.sh"), str(refs), timeout=2400, env=env)
    if result.returncode != 0:
        raise AssertionError(f"build-images.sh failed:\n{result.stderr[-6000:]}")
    return time.monotonic() - started


@dataclass
class Stack:
    engine: Engine
    env_file: Path
    http_port: int
    https_port: int
    env: dict[str, str] = field(default_factory=dict)
    up: subprocess.CompletedProcess[str] | None = None
    clients: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.engine.run(
            str(ENGINE / "usr/bin/docker"), "compose", *args, timeout=timeout, check=check, env=self.env
        )

    def exec(
        self, service: str, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.compose("exec", "-T", service, *args, timeout=timeout, check=check)

    def ps(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def container_ids(self, service: str, status: str = "running") -> list[str]:
        return self.compose("ps", "-q", "--status", status, service).stdout.split()

    def inspect(self, container: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.engine.docker("inspect", container).stdout)
        return data[0]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", "--no-log-prefix", service, timeout=60).stdout

    def network(self, name: str) -> str:
        return f"tally_{name}"

    def client(self, name: str) -> str:
        """A client container on the edge network, kept until the end of the session: while it lives no other
        container gets its address, so each client is one distinct visitor."""
        if name not in self.clients:
            container = f"tally-e2e-client-{name}"
            self.engine.docker(
                "run",
                "-d",
                "--name",
                container,
                "--label",
                "org.tally.e2e-client=1",
                "--network",
                self.network("edge"),
                "--read-only",
                "--cap-drop",
                "ALL",
                "-v",
                f"{E2E / 'client.py'}:/client.py:ro",
                image_refs()["alert-logger"],
                "python",
                "-c",
                "import time; time.sleep(86400)",
            )
            self.clients[name] = container
        return self.clients[name]

    def drop_clients(self) -> None:
        if self.clients:
            # check=False: the swarm tests (test_9_swarm.py) may have removed them with the whole stack.
            self.engine.docker("rm", "-f", *self.clients.values(), check=False)
            self.clients.clear()

    def visit(self, client: str, *args: str, timeout: float = 300) -> dict[str, Any]:
        """Runs client.py in the named client container; its JSON answer."""
        out = self.engine.docker("exec", self.client(client), "python", "/client.py", *args, timeout=timeout).stdout
        result: dict[str, Any] = json.loads(out)
        return result


def make_stack(engine: Engine) -> Stack:
    http_port, https_port, grafana_port = free_port(), free_port(), free_port()
    imports = engine.root / "secrets-import"
    imports.mkdir()
    env_file = engine.root / "stack.env"
    env_file.write_text(
        # Free ports on loopback only: nothing outside this machine reaches the stack under test.
        f"PUBLISH_ADDRESS=127.0.0.1\nHTTP_PORT={http_port}\nHTTPS_PORT={https_port}\nGRAFANA_LOCAL_PORT={grafana_port}\n"
        f"TALLY_E2E_DOCKER_SOCKET={engine.socket}\nTALLY_E2E_SECRETS_IMPORT={imports}\n"
    )
    env = dict(engine.env)
    # Every compose call (the suite's and scripts/deploy.sh's) sees these two files and this env file only:
    # a developer's .env is never read.
    env["COMPOSE_FILE"] = f"{REPO / 'compose.yaml'}:{OVERRIDE}"
    env["COMPOSE_ENV_FILES"] = str(env_file)
    return Stack(engine, env_file, http_port, https_port, env)


@contextlib.contextmanager
def running_engine() -> Iterator[Engine]:
    """The session's engine with the images built: the compose stack and the swarm tests share it."""
    engine = start_engine()
    try:
        seconds = build_images(engine)
        print(f"\n[e2e] images built in {seconds:.0f} s")
        yield engine
    finally:
        stop_engine(engine)


@contextlib.contextmanager
def running_stack(engine: Engine) -> Iterator[Stack]:
    stack = make_stack(engine)
    try:
        started = time.monotonic()
        stack.up = stack.compose("up", "-d", "--wait", "--wait-timeout", "600", timeout=900, check=False)
        print(f"[e2e] up -d --wait: exit {stack.up.returncode} in {time.monotonic() - started:.0f} s")
        yield stack
    finally:
        stack.drop_clients()
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "30", timeout=600, check=False)
