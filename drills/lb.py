"""The load balancer of the native drills: Debian's haproxy, configured like our Traefik service.

Traefik cannot run here (it discovers the app through the Docker API), so the drills put haproxy
in front of the gunicorn replicas. What makes a drill meaningful is that the balancer behaves like
Traefik does in the stack: round robin, the same active health check (path, interval, timeout,
1 failure = out, 1 success = in) and the same retry policy. Those values are read from the
stack's own files, never restated here.
"""

from __future__ import annotations

import re
import signal
import socket
import string
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from harness import REPO_ROOT
from harness.procs import free_port, port_open, read_log, start_logged, stop_process
from harness.tools import find_tool

APP_COMPOSE = REPO_ROOT / "compose" / "app.yaml"
TRAEFIK_DYNAMIC = REPO_ROOT / "traefik" / "dynamic"
TEMPLATE = Path(__file__).resolve().parent / "haproxy.cfg.tmpl"
HAPROXY_BIN = "/usr/sbin/haproxy"

# Traefik's documented defaults when a label is absent.
TRAEFIK_DEFAULT_INTERVAL = "30s"
TRAEFIK_DEFAULT_TIMEOUT = "5s"
# serversTransport defaults: 30 s to dial, no response-header limit (haproxy needs one: 60 s, as before).
TRAEFIK_DEFAULT_DIAL_TIMEOUT = "30s"
HAPROXY_SERVER_TIMEOUT_WITHOUT_LIMIT = "60s"
# Traefik load-balancing strategies and the haproxy algorithm that does the same thing.
STRATEGIES = {"wrr": "roundrobin", "p2c": "random(2)"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_COMPOSE_DEFAULT = re.compile(r"\$\{[A-Z0-9_]+:?-([^}]*)\}")


def go_duration_ms(text: str) -> int:
    """A Go duration ("5s", "1m30s", "250ms") in whole milliseconds; haproxy has no compound units."""
    value = text.strip()
    if not value or _DURATION_PART.sub("", value):
        raise ValueError(f"not a Go duration: {text!r}")
    return round(sum(float(n) * _UNIT_MS[unit] for n, unit in _DURATION_PART.findall(value)))


@dataclass(frozen=True)
class TraefikService:
    """What Traefik does for the app's service, as far as a balancer can mirror it."""

    name: str
    health_path: str
    health_interval_ms: int
    health_timeout_ms: int
    unhealthy_interval_ms: int
    retry_attempts: int
    strategy: str
    source: str
    dial_timeout_ms: int = 30_000
    response_timeout_ms: int = 60_000

    @property
    def retries(self) -> int:
        return max(self.retry_attempts - 1, 0)


def _resolve(value: str) -> str:
    # Labels may hold compose interpolation (`${VAR:-default}`); the drills use the default.
    return _COMPOSE_DEFAULT.sub(lambda match: match.group(1), str(value))


def _labels(compose_file: Path, service: str) -> dict[str, str]:
    doc = yaml.safe_load(compose_file.read_text())
    raw = doc["services"][service].get("labels", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: _resolve(value) for key, value in raw.items()}


def _dynamic(dynamic_dir: Path, kind: str) -> dict[str, dict[str, Any]]:
    """Every ``http.<kind>`` entry (middlewares, serversTransports) of the file provider's directory."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(dynamic_dir.glob("*.y*ml")):
        doc = yaml.safe_load(path.read_text()) or {}
        found.update((doc.get("http") or {}).get(kind) or {})
    return found


def _middlewares(dynamic_dir: Path) -> dict[str, dict[str, Any]]:
    return _dynamic(dynamic_dir, "middlewares")


def _forwarding_timeouts(name: str | None, dynamic_dir: Path) -> dict[str, str]:
    if not name:
        return {}
    transports = _dynamic(dynamic_dir, "serversTransports")
    base = name.split("@", 1)[0]
    if base not in transports:
        raise ValueError(f"serversTransport {name!r} is not defined in {dynamic_dir}")
    timeouts: dict[str, str] = transports[base].get("forwardingTimeouts") or {}
    return timeouts


def _expand(names: Sequence[str], middlewares: Mapping[str, dict[str, Any]], depth: int = 0) -> list[dict[str, Any]]:
    if depth > 10:
        raise ValueError("middleware chain nests too deep (a cycle?)")
    expanded = []
    for full_name in names:
        name = full_name.strip().split("@", 1)[0]
        if name not in middlewares:
            raise ValueError(f"router middleware {full_name!r} is not defined in traefik/dynamic")
        spec = middlewares[name]
        if "chain" in spec:
            expanded += _expand(spec["chain"]["middlewares"], middlewares, depth + 1)
        else:
            expanded.append(spec)
    return expanded


def read_traefik_service(
    compose_file: Path = APP_COMPOSE, dynamic_dir: Path = TRAEFIK_DYNAMIC, compose_service: str = "app"
) -> TraefikService:
    labels = _labels(compose_file, compose_service)
    prefix = "traefik.http.services."
    services = {key[len(prefix) :].split(".", 1)[0] for key in labels if key.startswith(prefix)}
    if len(services) != 1:
        raise ValueError(f"expected one Traefik service in {compose_file} labels, found {sorted(services)}")
    name = services.pop()
    lb = f"{prefix}{name}.loadbalancer."
    health_path = labels.get(lb + "healthcheck.path")
    if not health_path:
        raise ValueError(f"{compose_file}: the Traefik service {name!r} has no health check path")
    interval = go_duration_ms(labels.get(lb + "healthcheck.interval", TRAEFIK_DEFAULT_INTERVAL))
    timeout = go_duration_ms(labels.get(lb + "healthcheck.timeout", TRAEFIK_DEFAULT_TIMEOUT))
    unhealthy = labels.get(lb + "healthcheck.unhealthyinterval")
    strategy = labels.get(lb + "strategy", "wrr").lower()
    if strategy not in STRATEGIES:
        raise ValueError(f"no haproxy equivalent for Traefik strategy {strategy!r}")

    routers = {
        key.split(".")[3]
        for key, value in labels.items()
        if key.startswith("traefik.http.routers.") and key.endswith(".service") and value == name
    }
    timeouts = _forwarding_timeouts(labels.get(lb + "serverstransport"), dynamic_dir)
    attempts = 1
    for router in sorted(routers):
        chain = labels.get(f"traefik.http.routers.{router}.middlewares", "")
        for spec in _expand([n for n in chain.split(",") if n.strip()], _middlewares(dynamic_dir)):
            if "retry" in spec:
                attempts = max(attempts, int(spec["retry"].get("attempts", 1)))
    return TraefikService(
        name=name,
        health_path=health_path,
        health_interval_ms=interval,
        health_timeout_ms=timeout,
        unhealthy_interval_ms=go_duration_ms(unhealthy) if unhealthy else interval,
        retry_attempts=attempts,
        strategy=strategy,
        source=f"{_display(compose_file)} + {_display(dynamic_dir)}/",
        dial_timeout_ms=go_duration_ms(timeouts.get("dialTimeout", TRAEFIK_DEFAULT_DIAL_TIMEOUT)),
        response_timeout_ms=go_duration_ms(timeouts.get("responseHeaderTimeout", HAPROXY_SERVER_TIMEOUT_WITHOUT_LIMIT)),
    )


def render_config(
    service: TraefikService,
    port: int,
    servers: Sequence[tuple[str, int]],
    stats_socket: Path,
    template: Path = TEMPLATE,
) -> str:
    server_lines = "\n".join(f"    server {name} 127.0.0.1:{server_port}" for name, server_port in servers)
    return string.Template(template.read_text()).substitute(
        source=service.source,
        stats_socket=str(stats_socket),
        port=port,
        balance=STRATEGIES[service.strategy],
        health_path=service.health_path,
        health_interval=f"{service.health_interval_ms}ms",
        unhealthy_interval=f"{service.unhealthy_interval_ms}ms",
        health_timeout=f"{service.health_timeout_ms}ms",
        retry_attempts=service.retry_attempts,
        retries=service.retries,
        dial_timeout=f"{service.dial_timeout_ms}ms",
        response_timeout=f"{service.response_timeout_ms}ms",
        # Traefik retries transport errors that happen before a response started: refused or reset
        # connections and connections closed without a response. Not response timeouts: that request
        # reached a replica and may have been counted.
        retry_on="conn-failure empty-response" if service.retries else "none",
        servers=server_lines,
    )


@dataclass
class HAProxy:
    process: subprocess.Popen[bytes]
    port: int
    stats_socket: Path
    config_path: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, workdir: Path, servers: Sequence[tuple[str, int]], service: TraefikService | None = None) -> HAProxy:
        find_tool(HAPROXY_BIN, "apt-get install haproxy (scripts/install-test-deps.sh)")
        service = service or read_traefik_service()
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        stats_socket = workdir / "haproxy.sock"
        config_path = workdir / "haproxy.cfg"
        config_path.write_text(render_config(service, port, servers, stats_socket))
        check = subprocess.run([HAPROXY_BIN, "-c", "-q", "-f", str(config_path)], capture_output=True, text=True)
        if check.returncode != 0:
            raise AssertionError(f"haproxy rejected {config_path}:\n{check.stdout}{check.stderr}")
        log_path = workdir / "haproxy.log"
        # -db: foreground, no daemon, so the PID we hold is the proxy itself.
        process = start_logged(
            "haproxy",
            [HAPROXY_BIN, "-db", "-f", str(config_path)],
            log_path,
            ready=lambda: port_open(port) and stats_socket.exists(),
            ready_message="haproxy listening",
            timeout=15,
        )
        return cls(process, port, stats_socket, config_path, log_path)

    def stop(self) -> None:
        stop_process(self.process, timeout=10, sig=signal.SIGTERM)

    def log(self) -> str:
        return read_log(self.log_path)

    def command(self, line: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> list[dict[str, str]]:
        lines = [line for line in self.command("show stat").splitlines() if line.strip()]
        header = lines[0].lstrip("# ").split(",")
        return [dict(zip(header, line.split(","), strict=False)) for line in lines[1:]]

    def server_status(self, name: str) -> str:
        for row in self.stats():
            if row["pxname"] == "tally" and row["svname"] == name:
                return row["status"].split(" ")[0]
        raise KeyError(name)

    def retries(self) -> int:
        """Requests the proxy sent again (same server: wretr; another server: wredis)."""
        for row in self.stats():
            if row["pxname"] == "tally" and row["svname"] == "BACKEND":
                return int(row["wretr"] or 0) + int(row["wredis"] or 0)
        raise KeyError("BACKEND")


def _display(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)
