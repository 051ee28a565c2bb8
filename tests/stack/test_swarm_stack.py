"""The Swarm stack (swarm/render.py) against the compose model it is rendered from: what the two share
(images, environment, health checks, limits, users, commands) must not drift, and Docker's own loader
must accept the file. No engine needed: `docker stack config` only loads and validates."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.e2e.engine import ENGINE
from tests.stack.stackutil import REPO, render, render_stack, require_tool, service_networks

SWARM = REPO / "swarm"
# What swarm/compose.swarm.yaml may set: how Swarm places and rolls services, and how Traefik's ports are
# published. Anything else there would be configuration written twice.
SWARM_ONLY_DEPLOY = {"mode", "placement", "update_config", "rollback_config", "restart_policy"}
# Services the stack replaces (secrets-init: Swarm secrets) or never deploys (restore-pitr: a profile).
NOT_IN_STACK = {"secrets-init", "restore-pitr"}
SHARED = ("image", "environment", "healthcheck", "user", "command", "entrypoint", "read_only", "cap_drop", "cap_add")
# The Swarm provider's flags stand in for the Docker provider's; the socket proxy lets Prometheus and the
# Swarm endpoints through (both on purpose, in render.py).
REWRITTEN_COMMANDS = {"traefik", "socket-proxy"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return render_stack(tmp_path_factory.mktemp("swarm"))


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return render(files=(REPO / "compose.yaml",))


def test_the_swarm_override_sets_only_placement_rollout_and_ports() -> None:
    # Compose's merge tag means nothing to PyYAML; the keys are what matters here.
    override = yaml.safe_load((SWARM / "compose.swarm.yaml").read_text().replace("!override", ""))
    for name, svc in override["services"].items():
        assert set(svc) <= {"deploy", "ports"}, name
        assert set(svc.get("deploy", {})) <= SWARM_ONLY_DEPLOY, name
        assert "ports" not in svc or name == "traefik", name


def test_every_service_runs_with_what_compose_gives_it(stack: dict[str, Any], model: dict[str, Any]) -> None:
    assert set(stack["services"]) == set(model["services"]) - NOT_IN_STACK
    for name, svc in stack["services"].items():
        original = model["services"][name]
        for key in SHARED:
            if key == "command" and name in REWRITTEN_COMMANDS:
                continue
            assert svc.get(key) == original.get(key), (name, key)
        limits, compose_limits = svc["deploy"]["resources"]["limits"], original["deploy"]["resources"]["limits"]
        assert float(limits.pop("cpus")) == float(compose_limits["cpus"]), name
        assert limits == {k: v for k, v in compose_limits.items() if k != "cpus"}, name
        assert svc.get("stop_grace_period") == original.get("stop_grace_period"), name
        # Every label Traefik reads is on the service, unchanged but for the provider's network key.
        labels = {k.replace("traefik.docker.", "traefik.swarm."): v for k, v in (original.get("labels") or {}).items()}
        assert {**(svc.get("labels") or {}), **svc["deploy"].get("labels", {})} == labels, name


def test_the_providers_move_to_swarm(stack: dict[str, Any]) -> None:
    traefik = stack["services"]["traefik"]
    assert not [arg for arg in traefik["command"] if arg.startswith("--providers.docker")]
    assert "--providers.swarm.endpoint=tcp://socket-proxy:2375" in traefik["command"]
    assert all(port["mode"] == "host" for port in traefik["ports"])
    assert traefik["deploy"]["placement"]["constraints"] == ["node.role == manager"]
    app = stack["services"]["app"]["deploy"]
    assert app["update_config"]["order"] == "start-first"
    assert app["update_config"]["failure_action"] == "rollback"
    assert stack["services"]["node-exporter"]["deploy"]["mode"] == "global"
    assert all(svc["deploy"]["endpoint_mode"] == "dnsrr" for svc in stack["services"].values())
    prometheus = yaml.safe_load(Path(stack["configs"][prometheus_config(stack)]["file"]).read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["tally-app"]["dockerswarm_sd_configs"][0]["port"] == 9200
    assert "dns_sd_configs" not in jobs["tally-app"]
    # Swarm's own view (prometheus/rules/swarm.yml) comes from the managers' engines, on the port the docs give.
    (engines,) = jobs["docker-engine"]["dockerswarm_sd_configs"]
    assert (engines["role"], engines["port"]) == ("nodes", 9323)
    # ...outside every overlay: one network with a route out, for Prometheus alone.
    on_it = {name for name, svc in stack["services"].items() if "engine-metrics" in (svc.get("networks") or {})}
    assert on_it == {"prometheus"}
    assert not stack["networks"]["engine-metrics"].get("internal")
    assert {"source_labels": ["__meta_dockerswarm_node_role"], "regex": "manager", "action": "keep"} in jobs[
        "docker-engine"
    ]["relabel_configs"]
    # Each discovered job keeps the tasks' addresses on a network Prometheus shares with that service only.

    def kept(job: str, label: str) -> str:
        (regex,) = {r["regex"] for r in jobs[job]["relabel_configs"] if r.get("source_labels") == [label]}
        return str(regex).removeprefix("tally_")

    for job in ("tally-app", "node"):
        service, network = kept(job, "__meta_dockerswarm_service_name"), kept(job, "__meta_dockerswarm_network_name")
        members = {name for name, svc in stack["services"].items() if network in (svc.get("networks") or {})}
        assert members == {"prometheus", service}, (job, network, members)


def prometheus_config(stack: dict[str, Any]) -> str:
    for mount in stack["services"]["prometheus"]["configs"]:
        if mount["target"] == "/etc/prometheus/prometheus.yml":
            source: str = mount["source"]
            return source
    raise AssertionError("no prometheus.yml config")


def test_runbook_links_follow_the_same_setting(stack: dict[str, Any]) -> None:
    """RUNBOOK_BASE_URL reaches Prometheus as in compose, and the generated prometheus.yml still expands it."""
    prometheus = stack["services"]["prometheus"]
    assert prometheus["environment"]["RUNBOOK_BASE_URL"] == "."
    assert "--enable-feature=expand-external-labels" in prometheus["command"]
    generated = yaml.safe_load(Path(stack["configs"][prometheus_config(stack)]["file"]).read_text())
    assert generated["global"]["external_labels"]["runbook_base_url"] == "${RUNBOOK_BASE_URL}"


def test_secrets_and_config_files_keep_their_paths(stack: dict[str, Any], model: dict[str, Any]) -> None:
    for name, svc in stack["services"].items():
        original = model["services"][name]
        mounts = original.get("volumes") or []
        wanted = {m["volume"]["subpath"] for m in mounts if m.get("source") == "secrets" and "subpath" in m["volume"]}
        assert {s["source"] for s in svc.get("secrets", [])} == wanted, name
        for mount in svc.get("configs", []):
            config = stack["configs"][mount["source"]]
            source = Path(config["file"])
            assert source.is_file(), (name, source)
            if source.is_relative_to(REPO):
                bind = next(m for m in original["volumes"] if mount["target"].startswith(m["target"]))
                assert mount["target"] == bind["target"] + str(source)[len(bind["source"]) :], (name, mount)
    assert set(stack["secrets"]) == {
        m["volume"]["subpath"]
        for s in model["services"].values()
        for m in s.get("volumes") or []
        if "subpath" in (m.get("volume") or {})
    }


def assert_docker_accepts(stack_dir: Path) -> None:
    docker = require_tool(ENGINE / "usr/bin/docker", "docker CLI", "scripts/install-docker-engine.sh (as root)")
    result = subprocess.run(
        [docker, "stack", "config", "-c", str(stack_dir / "tally-stack.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_docker_accepts_the_stack_file(tmp_path: Path) -> None:
    render_stack(tmp_path)
    assert_docker_accepts(tmp_path)


def test_a_managed_database_replaces_the_postgres_service(tmp_path: Path) -> None:
    stack = render_stack(tmp_path, {"TALLY_DATABASE_HOST": "db.example.com"})
    services = stack["services"]
    assert "postgres" not in services
    app_url = services["app"]["environment"]["DATABASE_URL"]
    assert "@db.example.com:5432/" in app_url and "sslmode=verify-full" in app_url
    assert "sslmode=verify-full" in services["postgres-exporter"]["environment"]["DATA_SOURCE_URI"]
    assert services["backup"]["environment"]["PGSSLMODE"] == "verify-full"
    for name in ("app", "migrate", "backup", "postgres-exporter"):
        assert "db_ca" in {s["source"] for s in services[name]["secrets"]}, name
    # Every database client's network leads out of the swarm: the replicas' (db-app) as well as the jobs'.
    for name in ("app", "migrate", "backup", "postgres-exporter"):
        routed = [net for net in service_networks(services[name]) if "internal" not in stack["networks"][net]]
        assert routed, f"{name} has no network with a route to the managed server"
    # That every client works with what is rendered, over verified TLS: test_managed_postgres.py, on a real server.


def test_the_offsite_copy_keeps_its_files_on_swarm(tmp_path: Path) -> None:
    """backup/compose.offsite.yaml on a swarm: the age recipient becomes a Swarm secret like the others; the S3
    credentials, which the host renews in place (docs/deploy-aws.md), stay the node's file, bound read-only."""
    offsite = REPO / "backup" / "compose.offsite.yaml"
    stack = render_stack(tmp_path, {"BACKUP_S3_BUCKET": "tally-backups"}, extra=[offsite])
    backup = stack["services"]["backup"]
    env = backup["environment"]
    assert env["BACKUP_S3_BUCKET"] == "tally-backups"
    assert {"source": "backup_age_recipient", "target": "backup_age_recipient"} in backup["secrets"]
    assert env["BACKUP_AGE_RECIPIENT_FILE"] == "/run/secrets/backup_age_recipient"
    assert stack["secrets"]["backup_age_recipient"] == {"external": True}
    binds = [m for m in backup["volumes"] if m["type"] == "bind"]
    credentials = str(REPO / "secrets" / "aws_credentials")
    target = env["AWS_SHARED_CREDENTIALS_FILE"]
    assert binds == [{"type": "bind", "source": credentials, "target": target, "read_only": True}]
    assert "aws_credentials" not in stack["secrets"]
    assert_docker_accepts(tmp_path)


def test_swarm_object_names_are_valid(stack: dict[str, Any]) -> None:
    # The engine refuses longer names or other characters only at deploy time (`docker stack config` passes).
    for config in stack["configs"].values():
        assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9]", config["name"]), config["name"]
