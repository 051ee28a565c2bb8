#!/usr/bin/env python3
"""Renders the Docker Swarm stack file from the compose model: `docker stack deploy` runs what compose runs.

    swarm/render.py --out DIR [-f extra-compose.yaml ...]   then   docker stack deploy -c DIR/tally-stack.yaml tally

`docker compose config` merges compose.yaml (its includes and extends, with .env interpolated), any extra
files and swarm/compose.swarm.yaml (placement, modes, rolling updates). This script then makes the few
mechanical changes the compose format cannot express, so nothing of a service is written twice:

- secrets: each single-file mount of the `secrets` volume becomes the Swarm secret of the same name (same
  path, /run/secrets/<name>); secrets-init goes. Create the secrets first (docs/scaling.md). So do compose
  file secrets (the offsite overlay's), but for aws_credentials, which the host renews in place: a
  read-only bind of the node's file.
- read-only binds of the repository's service folders (traefik/, prometheus/, ...) become Swarm configs,
  named by content hash (configs are immutable; a changed file is a new config and a rolling update).
- `tmpfs:` and `shm_size` become tmpfs mounts; keys Swarm ignores (restart, security_opt, depends_on, ...)
  go; traefik.* labels move to the service (`deploy.labels`), where Traefik's Swarm provider reads them.
- every service uses `endpoint_mode: dnsrr`: Traefik and Prometheus address tasks directly, and service
  virtual IPs need IPVS in the node's kernel, which not every host has.
- Traefik reads the Swarm provider instead of the Docker one; Prometheus discovers the app's and
  node-exporter's tasks with dockerswarm_sd_configs (a generated prometheus.yml: the repository's, with
  those two jobs' discovery replaced), both through the read-only socket proxy. It also scrapes each
  manager's Docker Engine (`metrics-addr` at the node's address, port 9323): Swarm's own count of failed
  tasks and down nodes, which the rules in prometheus/rules/swarm.yml alert on.
- TALLY_DATABASE_HOST set: a managed PostgreSQL server (on TALLY_DATABASE_PORT, default 5432). No postgres
  service; every client points at that host with sslmode=verify-full against the CA in the `db_ca` secret
  (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
STACK = "tally"
OVERRIDE = REPO / "swarm" / "compose.swarm.yaml"
SECRETS_VOLUME = "secrets"
# Replaced by Swarm secrets (secrets-init) or never started by a deploy (restore-pitr, a profile).
DROPPED_SERVICES = {"secrets-init", "restore-pitr"}
# Compose keys `docker stack deploy` ignores or rejects; what replaces each is in docs/scaling.md.
UNSUPPORTED = {"build", "depends_on", "restart", "security_opt", "network_mode", "pid", "profiles", "devices"}
SOCKET_PROXY_GET = "|services|tasks|nodes|networks|(?:services|tasks|nodes|networks)/[a-zA-Z0-9_.-]+"
# Prometheus jobs whose targets are one per task: discovered from the Swarm API (service, port, network).
SWARM_SD_JOBS = {"tally-app": ("app", 9200, "app-metrics"), "node": ("node-exporter", 9100, "scrape-node")}
# Where every manager's dockerd serves its metrics ("metrics-addr": "<node address>:9323" in daemon.json).
ENGINE_METRICS_PORT = 9323
ENGINE_METRICS_NETWORK = "engine-metrics"
CA_FILE = "/run/secrets/db_ca"
# The instance role's temporary S3 credentials, renewed every 15 minutes by the host (docs/deploy-aws.md);
# the backup task runs on the node that holds the file (node label tally.db).
RENEWED_IN_PLACE = {"aws_credentials"}


def compose_model(compose: list[str], extra: list[Path]) -> dict[str, Any]:
    files = [REPO / "compose.yaml", *extra, OVERRIDE]
    cmd = [*compose, "--project-name", STACK, *(a for f in files for a in ("-f", str(f))), "config", "--format", "json"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"render: docker compose config failed: {result.stderr.strip()}")
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def size_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)b?", text.lower())
    if not match:
        raise ValueError(f"size {text!r}")
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def loopback(address: str | None) -> bool:
    return bool(address) and ipaddress.ip_address(address).is_loopback


def tmpfs_mount(spec: str) -> dict[str, Any]:
    target, _, options = spec.partition(":")
    tmpfs: dict[str, Any] = {}
    for option in filter(None, options.split(",")):
        key, _, value = option.partition("=")
        if key == "size":
            tmpfs["size"] = size_bytes(value)
        elif key == "mode":
            tmpfs["mode"] = int(value, 8)
        # uid/gid: Swarm's tmpfs has no owner option; the mounts that had one are scratch for root-less use.
    return {"type": "tmpfs", "target": target, "tmpfs": tmpfs}


class Renderer:
    def __init__(self, model: dict[str, Any], out: Path, database_host: str, database_port: int = 5432) -> None:
        self.model = model
        self.out = out
        self.database_host = database_host
        self.database_port = database_port
        self.configs: dict[str, dict[str, Any]] = {}
        self.secrets: set[str] = set()

    def config(self, service: str, source: Path, target: str) -> dict[str, Any]:
        # Swarm object names: at most 64 characters of [a-zA-Z0-9_.-]; the digest covers path and content.
        digest = hashlib.sha256(target.encode() + b"\0" + source.read_bytes()).hexdigest()[:10]
        key = re.sub(r"[^a-zA-Z0-9_.-]", "_", f"{service}_{Path(target).name}")[:40] + f"-{digest}"
        self.configs[key] = {"file": str(source), "name": f"{STACK}_{key}"}
        return {"source": key, "target": target, "mode": 0o444}

    def mounts(self, name: str, svc: dict[str, Any]) -> None:
        volumes, configs, secrets = [], [], []
        # Compose's file secrets (backup/compose.offsite.yaml's) become Swarm secrets of the same name, made
        # by the operator like the others; a file the host renews in place is bound from the node instead,
        # since a Swarm secret cannot change.
        for ref in svc.pop("secrets", None) or []:
            secret, target = ref["source"], ref.get("target") or f"/run/secrets/{ref['source']}"
            if secret in RENEWED_IN_PLACE:
                source = self.model["secrets"][secret]["file"]
                volumes.append({"type": "bind", "source": source, "target": target, "read_only": True})
            else:
                self.secrets.add(secret)
                secrets.append({"source": secret, "target": target.removeprefix("/run/secrets/")})
        for mount in svc.pop("volumes", None) or []:
            source = mount.get("source", "")
            if mount["type"] == "volume" and source == SECRETS_VOLUME:
                secret = mount["volume"]["subpath"]
                self.secrets.add(secret)
                secrets.append({"source": secret, "target": secret})
            elif mount["type"] == "bind" and mount.get("read_only") and Path(source).is_relative_to(REPO):
                root = Path(source)
                files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
                for path in files:
                    target = mount["target"] + ("" if path == root else f"/{path.relative_to(root)}")
                    if name == "prometheus" and target == "/etc/prometheus/prometheus.yml":
                        path = self.prometheus_config(path)
                    configs.append(self.config(name, path, target))
            else:
                mount.pop("bind", None)
                if not mount.get("volume"):
                    mount.pop("volume", None)
                volumes.append(mount)
        volumes += [tmpfs_mount(spec) for spec in svc.pop("tmpfs", None) or []]
        if "shm_size" in svc:
            shm = {"size": size_bytes(svc.pop("shm_size"))}
            volumes.append({"type": "tmpfs", "target": "/dev/shm", "tmpfs": shm})  # noqa: S108 -- in the container
        for key, value in (("volumes", volumes), ("configs", configs), ("secrets", secrets)):
            if value:
                svc[key] = value

    def prometheus_config(self, source: Path) -> Path:
        config = yaml.safe_load(source.read_text())
        for job in config["scrape_configs"]:
            if job["job_name"] not in SWARM_SD_JOBS:
                continue
            service, port, network = SWARM_SD_JOBS[job["job_name"]]
            for key in ("static_configs", "dns_sd_configs"):
                job.pop(key, None)
            job["dockerswarm_sd_configs"] = [
                {"host": "tcp://socket-proxy:2375", "role": "tasks", "port": port, "refresh_interval": "15s"}
            ]
            job["relabel_configs"] = [
                {"source_labels": ["__meta_dockerswarm_service_name"], "regex": f"{STACK}_{service}", "action": "keep"},
                {"source_labels": ["__meta_dockerswarm_task_desired_state"], "regex": "running", "action": "keep"},
                {"source_labels": ["__meta_dockerswarm_network_name"], "regex": f"{STACK}_{network}", "action": "keep"},
                {"source_labels": ["__meta_dockerswarm_node_hostname"], "target_label": "node"},
                *job.get("relabel_configs", []),
            ]
        # A killed or crashed task is replaced within seconds, before any `for:` on `up` can notice; the
        # managers remember it as failed. Only managers know the cluster's tasks and nodes.
        config["scrape_configs"].append(
            {
                "job_name": "docker-engine",
                "dockerswarm_sd_configs": [
                    {
                        "host": "tcp://socket-proxy:2375",
                        "role": "nodes",
                        "port": ENGINE_METRICS_PORT,
                        "refresh_interval": "30s",
                    }
                ],
                "relabel_configs": [
                    {"source_labels": ["__meta_dockerswarm_node_role"], "regex": "manager", "action": "keep"},
                    {"source_labels": ["__meta_dockerswarm_node_hostname"], "target_label": "node"},
                ],
            }
        )
        target = self.out / "prometheus.yml"
        target.write_text(
            f"# Generated by swarm/render.py from {source.relative_to(REPO)}: the per-task jobs discover"
            " Swarm tasks. Do not edit.\n" + yaml.safe_dump(config, sort_keys=False)
        )
        return target

    def commands(self, name: str, svc: dict[str, Any]) -> None:
        command = svc.get("command") or []
        if name == "traefik":
            swapped = [arg.replace("--providers.docker", "--providers.swarm") for arg in command]
            # The Swarm provider polls (no events); a task that stopped is gone from the routes within this.
            svc["command"] = [*swapped, "--providers.swarm.refreshSeconds=2"]
        elif name == "socket-proxy":
            svc["command"] = [self.socket_proxy_arg(arg) for arg in command]
        elif name == "prometheus":
            # dockerswarm_sd reads the Swarm API through the socket proxy.
            svc["networks"]["socket"] = None
            # The managers' engines serve their metrics on the nodes' addresses, outside every overlay: the
            # one network with a route out, Prometheus alone on it.
            svc["networks"][ENGINE_METRICS_NETWORK] = None
            self.model["networks"][ENGINE_METRICS_NETWORK] = {}

    @staticmethod
    def socket_proxy_arg(arg: str) -> str:
        if arg.startswith("-allowfrom="):
            return arg + ",prometheus"
        if arg.startswith("-allowGET="):
            return arg.replace("|containers/json|", f"|containers/json{SOCKET_PROXY_GET}|")
        return arg

    def managed_database(self, services: dict[str, Any]) -> None:
        host, port = self.database_host, self.database_port
        services.pop("postgres", None)
        ssl = f"sslmode=verify-full&sslrootcert={CA_FILE}"
        for svc in services.values():
            env = svc.get("environment") or {}
            if "DATABASE_URL" in env:
                env["DATABASE_URL"] = env["DATABASE_URL"].replace("@postgres:5432/", f"@{host}:{port}/") + f"?{ssl}"
            if "DATA_SOURCE_URI" in env:
                env["DATA_SOURCE_URI"] = (
                    env["DATA_SOURCE_URI"].replace("postgres:5432/", f"{host}:{port}/").replace("sslmode=disable", ssl)
                )
            if env.get("PGHOST") == "postgres":
                env.update(PGHOST=host, PGPORT=str(port), PGSSLMODE="verify-full", PGSSLROOTCERT=CA_FILE)
                # WAL streaming needs the replication protocol, which managed servers do not offer.
                env["BACKUP_PITR"] = "false"
            if any(key in env for key in ("DATABASE_URL", "DATA_SOURCE_URI", "PGHOST")):
                svc.setdefault("secrets", []).append({"source": "db_ca", "target": "db_ca"})
                self.secrets.add("db_ca")
        # The clients (the jobs and the exporter on backend, the replicas on db-app) reach the server outside
        # the swarm.
        for network in ("backend", "db-app"):
            self.model["networks"][network].pop("internal", None)

    def render(self) -> dict[str, Any]:
        services: dict[str, Any] = {}
        for name, original in sorted(self.model["services"].items()):
            if name in DROPPED_SERVICES:
                continue
            svc = copy.deepcopy(original)
            for key in UNSUPPORTED:
                svc.pop(key, None)
            for key in ("command", "entrypoint"):
                if svc.get(key) is None:
                    svc.pop(key, None)
            svc["networks"] = svc.get("networks") or {}
            self.commands(name, svc)
            self.mounts(name, svc)
            deploy = svc.setdefault("deploy", {})
            if not deploy.get("placement"):
                deploy.pop("placement", None)
            deploy["endpoint_mode"] = "dnsrr"
            labels = svc.get("labels") or {}
            moved = {k: v for k, v in labels.items() if k.startswith("traefik.")}
            if moved:
                net = moved.pop("traefik.docker.network", None)
                if net:
                    moved["traefik.swarm.network"] = net
                deploy["labels"] = {**deploy.get("labels", {}), **moved}
                svc["labels"] = {k: v for k, v in labels.items() if k not in moved and k != "traefik.docker.network"}
                if not svc["labels"]:
                    svc.pop("labels")
            limits = deploy.get("resources", {}).get("limits", {})
            if "cpus" in limits:
                limits["cpus"] = f"{float(limits['cpus']):.2f}"
            # A Swarm port binds every address of the node: a loopback-only one (Grafana's SSH tunnel end)
            # would become public, so it goes; docs/scaling.md says how to reach Grafana instead.
            ports = [p for p in svc.pop("ports", None) or [] if not loopback(p.get("host_ip"))]
            for port in ports:
                port.pop("host_ip", None)
                port["published"] = int(port["published"])
            if ports:
                svc["ports"] = ports
            if not svc["networks"]:
                svc.pop("networks")
            services[name] = svc
        if self.database_host:
            self.managed_database(services)
        networks = {}
        for name, net in self.model["networks"].items():
            net = {k: v for k, v in net.items() if k != "name" and v not in ({}, None)}
            networks[name] = {"driver": "overlay", **net}
        volumes = {
            name: {k: v for k, v in vol.items() if k != "name"}
            for name, vol in self.model.get("volumes", {}).items()
            if name != SECRETS_VOLUME
        }
        return {
            "services": services,
            "networks": networks,
            "volumes": volumes,
            "configs": dict(sorted(self.configs.items())),
            # Created before the first deploy (docs/scaling.md); Swarm keeps them encrypted in its Raft log.
            "secrets": {name: {"external": True} for name in sorted(self.secrets)},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for tally-stack.yaml and prometheus.yml")
    parser.add_argument("-f", "--file", type=Path, action="append", default=[], help="extra compose file")
    parser.add_argument("--compose", default=os.environ.get("COMPOSE", "docker compose"), help="compose command")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = compose_model(args.compose.split(), [f.resolve() for f in args.file])
    port = int(os.environ.get("TALLY_DATABASE_PORT") or 5432)
    stack = Renderer(model, args.out.resolve(), os.environ.get("TALLY_DATABASE_HOST", ""), port).render()
    header = "# Generated by swarm/render.py from compose.yaml + swarm/compose.swarm.yaml. Do not edit.\n"
    (args.out / "tally-stack.yaml").write_text(header + yaml.safe_dump(stack, sort_keys=False, width=200))
    print(args.out / "tally-stack.yaml")


if __name__ == "__main__":
    main()
