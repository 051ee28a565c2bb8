"""Coherence of the rendered production stack: hardening, images, secrets, networks, dependencies,
configuration coverage and the database connection budget."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest

from app.config import SETTINGS, SETTINGS_BY_NAME

from .stackutil import (
    COMPOSE_FILES,
    DEV_COMPOSE,
    REPO,
    final_stage,
    load_yaml,
    render,
    resolvable_from,
    seconds,
    secrets_init_module,
    service_networks,
)

# One-shot jobs: they run to completion, so no restart policy (a loop would hide their failure from the
# `service_completed_successfully` dependants) and no healthcheck (nothing long-running to probe).
ONESHOTS = {
    "migrate": "database migrations, once per up/deploy",
    "secrets-init": "fills the secrets volume (import, keep or generate) before anything reads it",
    "acme-init": "hands the ACME volume to Traefik's non-root user",
}
# Services that run as uid 0 (still with every capability dropped but the ones below), and why.
ROOT_ALLOWED = {
    "socket-proxy": "opens the host Docker socket (root:docker) without knowing the host's docker gid",
    "cadvisor": "reads every container's cgroup and the Docker storage tree",
    "acme-init": "chowns a root-owned named volume (CHOWN only)",
}
CAP_ADD_ALLOWED = {
    "acme-init": {"CHOWN"},
    "cadvisor": {"SYSLOG"},
}


@pytest.fixture(scope="module")
def model() -> dict[str, Any]:
    return render()


@pytest.fixture(scope="module")
def services(model: dict[str, Any]) -> dict[str, Any]:
    return dict(model["services"])


def _is_oneshot(name: str) -> bool:
    return name in ONESHOTS


def test_every_service_has_log_rotation(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        options = logging.get("options") or {}
        assert re.fullmatch(r"\d+[kmg]", options.get("max-size", "")), f"{name}: max-size"
        assert int(options.get("max-file", "0")) >= 1, f"{name}: max-file"


def test_every_service_has_a_restart_policy(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        expected = "no" if _is_oneshot(name) else "unless-stopped"
        assert svc.get("restart") == expected, f"{name}: restart {svc.get('restart')!r}, expected {expected!r}"


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        if _is_oneshot(name):
            continue
        check = svc.get("healthcheck") or {}
        assert not check.get("disable"), name
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, f"{name}: {test}"
        assert seconds(check.get("interval", "0s")) > 0 and int(check.get("retries", 0)) >= 1, name


def test_every_service_has_cpu_and_memory_limits(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        limits = ((svc.get("deploy") or {}).get("resources") or {}).get("limits") or {}
        assert float(limits.get("cpus", 0)) > 0, f"{name}: no cpu limit"
        assert int(limits.get("memory", 0)) > 0, f"{name}: no memory limit"


def test_every_service_is_hardened(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        assert svc.get("read_only") is True, f"{name}: read_only"
        assert "ALL" in (svc.get("cap_drop") or []), f"{name}: cap_drop ALL"
        assert "no-new-privileges:true" in (svc.get("security_opt") or []), f"{name}: no-new-privileges"
        added = set(svc.get("cap_add") or [])
        assert added <= CAP_ADD_ALLOWED.get(name, set()), f"{name}: unexpected cap_add {added}"
        assert not svc.get("privileged"), f"{name}: privileged"
        assert svc.get("pid") in (None, "host") and (svc.get("pid") is None or name == "node-exporter"), name
        assert svc.get("network_mode") in (None, "none"), f"{name}: network_mode {svc.get('network_mode')}"


def _effective_user(svc: dict[str, Any]) -> str:
    if svc.get("user"):
        return str(svc["user"])
    build = svc.get("build")
    assert build, "no `user:` and not built here: state the user explicitly"
    dockerfile = Path(build["context"]) / build.get("dockerfile", "Dockerfile")
    users = [line.split(None, 1)[1] for line in dockerfile.read_text().splitlines() if line.startswith("USER ")]
    assert users, f"{dockerfile} has no USER"
    return str(users[-1]).strip()


def test_services_run_as_non_root_unless_justified(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        user = _effective_user(svc)
        uid = user.split(":")[0]
        is_root = uid in ("0", "root")
        assert is_root == (name in ROOT_ALLOWED), f"{name}: user {user!r}"


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
        if svc.get("build"):
            continue  # built from this checkout; the tag names the local build
        # Full release version: major.minor.patch, or major.minor where that is the release (PostgreSQL).
        assert re.match(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.-]+)?$", tag), f"{name}: {image} needs a full version tag"


def test_oneshots_only_gate_with_completion_and_services_with_health(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for target, dep in (svc.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown service {target}"
            condition = dep.get("condition")
            if _is_oneshot(target):
                assert condition == "service_completed_successfully", f"{name} -> {target}: {condition}"
            else:
                assert condition == "service_healthy", f"{name} -> {target}: {condition}"
                assert services[target].get("healthcheck"), f"{name} waits for {target}, which has no healthcheck"


def test_app_waits_for_migrations_and_database(services: dict[str, Any]) -> None:
    deps = services["app"]["depends_on"]
    assert deps["migrate"]["condition"] == "service_completed_successfully"
    assert deps["postgres"]["condition"] == "service_healthy"
    assert services["migrate"]["command"] == ["flask", "--app", "app", "db", "upgrade"]
    assert services["migrate"]["image"] == services["app"]["image"]


def _secret_file_mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in svc.get("volumes") or [] if v.get("type") == "volume" and v.get("source") == "secrets"]


def test_every_secret_reader_waits_for_secrets_init(services: dict[str, Any]) -> None:
    readers = {name for name, svc in services.items() if _secret_file_mounts(svc) or svc.get("secrets")}
    readers.discard("secrets-init")
    assert {"app", "migrate", "postgres", "backup", "grafana", "postgres-exporter", "blackbox", "prometheus"} <= readers
    for name in readers:
        dep = (services[name].get("depends_on") or {}).get("secrets-init")
        assert dep, f"{name} reads secrets but does not wait for secrets-init"
        assert dep["condition"] == "service_completed_successfully", name


def test_a_fresh_clone_needs_no_secret_file(model: dict[str, Any]) -> None:
    # A compose file-secret whose file is missing stops `docker compose up` before anything starts: the
    # base stack must have none, so that `docker compose up -d` works on a fresh clone.
    assert not model.get("secrets"), f"file secrets need ./secrets files first: {sorted(model['secrets'])}"
    assert (REPO / "secrets" / "README.md").is_file(), "secrets/ must exist in a clone (secrets-init mounts it)"
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert "secrets/*" in ignored and "!secrets/README.md" in ignored


def test_only_secrets_init_mounts_the_whole_secrets_volume(model: dict[str, Any], services: dict[str, Any]) -> None:
    assert model["volumes"]["secrets"]["name"] == "tally_secrets"  # the name secrets_init.py prints
    for name, svc in services.items():
        for mount in _secret_file_mounts(svc):
            if name == "secrets-init":
                continue
            subpath = (mount.get("volume") or {}).get("subpath")
            assert subpath, f"{name} mounts the whole secrets volume; mount single files (volume.subpath)"
            assert "/" not in subpath, f"{name}: {subpath}"
            assert mount.get("read_only") is True, f"{name}: secret file {subpath} must be read-only"
            assert mount["target"] == f"/run/secrets/{subpath}", f"{name}: {mount['target']}"


def test_secrets_init_writes_the_volume_as_the_owner_the_image_gives_it(services: dict[str, Any]) -> None:
    init = services["secrets-init"]
    assert init["image"] == services["app"]["image"] and init["network_mode"] == "none"
    assert init["user"] == "10001:10001"
    whole = [m for m in _secret_file_mounts(init) if not (m.get("volume") or {}).get("subpath")]
    assert len(whole) == 1 and not whole[0].get("read_only"), "secrets-init needs the whole volume, writable"
    store = whole[0]["target"]
    imports = [v for v in init.get("volumes") or [] if v["type"] == "bind"]
    assert [(v["source"], v["target"], v.get("read_only")) for v in imports] == [
        (str(REPO / "secrets"), "/import", True)
    ]
    command = init["command"]
    assert command[:2] == ["python", "/opt/tally/secrets_init.py"]
    assert command[command.index("--store") + 1] == store and command[command.index("--import-dir") + 1] == "/import"
    # A new named volume takes owner and mode from the image directory it is mounted over: the image must
    # create that directory owned by the uid secrets-init runs as, or a fresh volume is root's.
    _, stage = final_stage()
    runs = " ".join(i.value for i in stage.all("RUN"))
    assert re.search(rf"install -d -o 10001 -g 10001 -m 0700 {re.escape(store)}(\s|$)", runs), runs
    copies = [i.value.split() for i in stage.all("COPY")]
    assert ["scripts/secrets_init.py", "/opt/tally/secrets_init.py"] in copies


def test_secrets_init_installs_every_mounted_secret_file(services: dict[str, Any]) -> None:
    mounted = {
        (m.get("volume") or {}).get("subpath")
        for name, svc in services.items()
        if name != "secrets-init"
        for m in _secret_file_mounts(svc)
    }
    # A mounted file secrets-init does not create makes the container fail to start; an unmounted one is dead.
    module = secrets_init_module()
    assert mounted == {spec.name for spec in module.SPECS} | set(module.DERIVED)


def test_app_scales_behind_traefik(services: dict[str, Any]) -> None:
    app = services["app"]
    assert "container_name" not in app and not app.get("ports"), "replicas need anonymous containers, no ports"
    assert int(app["deploy"]["replicas"]) == 2
    assert int(render({"APP_REPLICAS": "5"})["services"]["app"]["deploy"]["replicas"]) == 5
    assert app["environment"]["TRUSTED_PROXY_HOPS"] == "1"


def test_only_traefik_publishes_ports(services: dict[str, Any]) -> None:
    publishers = {name for name, svc in services.items() if svc.get("ports")}
    assert publishers == {"traefik", "grafana"}
    # Grafana only on the host's loopback, for an SSH tunnel.
    assert {p.get("host_ip") for p in services["grafana"]["ports"]} == {"127.0.0.1"}
    assert not any(svc.get("container_name") for svc in services.values())


def test_graceful_shutdown_fits_in_the_stop_grace_period(services: dict[str, Any]) -> None:
    app = services["app"]
    graceful = float(app["environment"]["GUNICORN_GRACEFUL_TIMEOUT"])
    delay = float(app["environment"]["SHUTDOWN_DELAY"])
    grace = seconds(app["stop_grace_period"])
    assert delay > 0, "Traefik must get time to take a stopping replica out (app/shutdown.py)"
    assert delay + graceful + 5 <= grace, (
        f"delay {delay}s + graceful {graceful}s must end well before SIGKILL at {grace}s"
    )
    # The same default must hold when compose does not set it (the image's gunicorn.conf.py).
    from app.config import load_config

    defaults = load_config({"TALLY_ENV": "development"})
    assert defaults.shutdown_delay + defaults.gunicorn_graceful_timeout + 5 <= grace


# --- networks -----------------------------------------------------------------------------------------------


def test_network_isolation(model: dict[str, Any], services: dict[str, Any]) -> None:
    networks = model["networks"]
    scrape = {
        "scrape-postgres": "postgres-exporter",
        "scrape-node": "node-exporter",
        "scrape-cadvisor": "cadvisor",
        "scrape-blackbox": "blackbox",
    }
    for internal in ("backend", "monitoring", "dashboards", *scrape, "traefik-metrics", "socket"):
        assert networks[internal].get("internal") is True, internal
    members = {net: {n for n, s in services.items() if net in service_networks(s)} for net in networks}
    assert "postgres" not in members["edge"]
    assert set(service_networks(services["postgres"])) == {"backend", "db-app"}
    # The app meets PostgreSQL on a network of its own: migrations, backups and the exporter cannot reach :8000.
    assert members["db-app"] == {"app", "postgres"} and networks["db-app"].get("internal") is True
    assert members["socket"] == {"traefik", "socket-proxy", "cadvisor"}
    assert set(service_networks(services["socket-proxy"])) == {"socket"}
    assert members["edge"] == {"traefik", "blackbox"}
    # Grafana meets Traefik on a network of its own: it reaches neither blackbox's probe nor Traefik's metrics.
    assert members["grafana"] == {"traefik", "grafana"}
    # Only Traefik reaches the app's HTTP port, only Prometheus its metrics port.
    assert members["app"] == {"traefik", "app"}
    assert members["app-metrics"] == {"prometheus", "app"} and networks["app-metrics"].get("internal") is True
    assert set(service_networks(services["app"])) == {"app", "db-app", "app-metrics"}
    # Each exporter's metrics port is on a network of its own with Prometheus, Traefik's too: no scrape target
    # shares a network with Grafana, Alertmanager or another exporter, and Traefik (the one service visitors
    # talk to) reaches no exporter.
    for network, exporter in scrape.items():
        assert members[network] == {"prometheus", exporter}, network
    assert members["traefik-metrics"] == {"prometheus", "traefik"}
    # Grafana queries Prometheus on a network of its own: it cannot reach Alertmanager's API (silences).
    assert members["monitoring"] == {"prometheus", "alertmanager", "alert-logger"}
    assert members["dashboards"] == {"prometheus", "grafana"}
    # Alertmanager (no authentication) is off edge; its egress network is its own.
    assert members["alerting-egress"] == {"alertmanager"}
    assert "alertmanager" not in members["edge"]
    # The app trusts X-Forwarded-For only from the app network's subnet.
    subnet = networks["app"]["ipam"]["config"][0]["subnet"]
    assert services["app"]["environment"]["TRUSTED_PROXY_CIDRS"] == subnet
    # Each metrics port serves only Prometheus's network to it (and loopback): the app's metrics port the
    # app-metrics subnet, Traefik's :8082 (traefik/dynamic/metrics.yml) traefik-metrics. No other network's
    # members are let in (the deploy's drain reads Traefik's metrics over Traefik's own loopback).
    subnets = {name: net["ipam"]["config"][0]["subnet"] for name, net in networks.items() if net.get("ipam")}
    assert set(subnets) == {"app", "app-metrics", "traefik-metrics"}
    fixed = [ipaddress.ip_network(s) for s in subnets.values()]
    assert not any(a.overlaps(b) for i, a in enumerate(fixed) for b in fixed[i + 1 :]), subnets
    assert services["app"]["environment"]["METRICS_ALLOWED_CIDRS"] == subnets["app-metrics"]
    traefik_allowed = services["traefik"]["environment"]["METRICS_ALLOWED_CIDRS"].split(",")
    assert traefik_allowed == ["127.0.0.1/32", "::1/128", subnets["traefik-metrics"]]


def test_every_service_has_a_pids_limit(services: dict[str, Any]) -> None:
    """CIS Docker Benchmark 5.28."""
    for name, svc in services.items():
        pids = svc.get("pids_limit") or svc.get("deploy", {}).get("resources", {}).get("limits", {}).get("pids")
        assert pids and 0 < int(pids) <= 1024, name


def test_docker_socket_only_in_the_proxy(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            if "docker.sock" in volume.get("source", "") or volume.get("source") in ("/var/run", "/run"):
                assert name == "socket-proxy", f"{name} mounts the Docker socket"
                assert volume.get("read_only") is True


def test_config_file_urls_resolve_inside_the_stack(model: dict[str, Any]) -> None:
    """Every host:port the mounted configs point at is a service on a network the caller shares."""
    prom = load_yaml(REPO / "prometheus" / "prometheus.yml")
    checked = 0
    for job in prom["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                if target.startswith("http"):
                    host = re.match(r"https?://([^/:]+)", target).group(1)  # type: ignore[union-attr]
                    source = "blackbox"
                else:
                    host = target.rsplit(":", 1)[0]
                    source = "prometheus"
                if host == "localhost":
                    continue
                assert resolvable_from(model, source, host), f"{job['job_name']}: {source} cannot resolve {host}"
                checked += 1
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                assert resolvable_from(model, "prometheus", host), f"{job['job_name']}: {host}"
                checked += 1
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__" and "replacement" in relabel:
                host = relabel["replacement"].rsplit(":", 1)[0]
                assert resolvable_from(model, "prometheus", host), f"{job['job_name']}: {host}"
    for am in prom["alerting"]["alertmanagers"]:
        for static in am["static_configs"]:
            for target in static["targets"]:
                assert resolvable_from(model, "prometheus", target.rsplit(":", 1)[0])
    datasources = load_yaml(REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml")
    for ds in datasources["datasources"]:
        host = re.match(r"https?://([^/:]+)", ds["url"]).group(1)  # type: ignore[union-attr]
        assert resolvable_from(model, "grafana", host), ds["url"]
    for receiver in load_yaml(REPO / "alertmanager" / "alertmanager.yml")["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            host = re.match(r"https?://([^/:]+)", hook["url"]).group(1)  # type: ignore[union-attr]
            assert resolvable_from(model, "alertmanager", host), hook["url"]
    assert checked >= 7  # the backup sidecar is no scrape target: node-exporter serves its textfile


def test_scrape_ports_match_the_services(model: dict[str, Any], services: dict[str, Any]) -> None:
    prom = load_yaml(REPO / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    assert jobs["tally-app"]["dns_sd_configs"][0]["port"] == int(services["app"]["environment"]["METRICS_PORT"])
    traefik_metrics = next(a for a in services["traefik"]["command"] if a.startswith("--entrypoints.metrics.address="))
    assert jobs["traefik"]["static_configs"][0]["targets"] == [f"traefik:{traefik_metrics.rsplit(':', 1)[1]}"]


# --- files, mounts and secrets ------------------------------------------------------------------------------


def test_bind_mounts_from_the_repo_exist(services: dict[str, Any]) -> None:
    # A missing source would be created by Docker as an empty directory: a silently empty config.
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            if volume["type"] == "bind" and volume["source"].startswith(str(REPO)):
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} does not exist"
                assert volume.get("read_only") is True, f"{name}: {volume['source']} must be read-only"


def test_config_files_named_in_flags_are_mounted(services: dict[str, Any]) -> None:
    found = 0
    for name, svc in services.items():
        binds = [v for v in svc.get("volumes") or [] if v["type"] == "bind"]
        for arg in svc.get("command") or []:
            match = re.match(r"--(?:config\.file|providers\.file\.directory)=(/\S+)", arg)
            if not match:
                continue
            path = match.group(1)
            mount = next(
                (v for v in binds if path == v["target"] or path.startswith(v["target"].rstrip("/") + "/")), None
            )
            assert mount, f"{name}: {path} is not on a bind mount"
            source = Path(mount["source"]) / Path(path).relative_to(mount["target"])
            assert source.exists(), f"{name}: {path} -> {source} missing"
            found += 1
    assert found >= 4


def test_every_file_variable_points_at_a_mounted_secret_file(model: dict[str, Any], services: dict[str, Any]) -> None:
    checked = 0
    for name, svc in services.items():
        files = {m["target"] for m in _secret_file_mounts(svc) if (m.get("volume") or {}).get("subpath")}
        files |= {s["target"] for s in svc.get("secrets") or []}
        for key, value in (svc.get("environment") or {}).items():
            if key.endswith("_FILE"):
                assert value in files, f"{name}: {key}={value} is not a secret file mounted into {name}"
                checked += 1
    assert checked >= 6


SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|CREDENTIAL|API_KEY|DSN", re.IGNORECASE)


def test_no_secret_value_in_environments(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRETISH.search(key) and not key.endswith("_FILE"):
                assert not value, f"{name}: {key} carries a value; use a secret file and {key}_FILE"
    _, stage = final_stage()
    env_lines = " ".join(i.value for i in stage.all("ENV") + stage.all("ARG"))
    assert not SECRETISH.search(env_lines), "the image must not carry secret-looking ENV/ARG"


LITERAL_SECRET = re.compile(
    r"(PASSWORD|SECRET_KEY|TOKEN|API_KEY)[A-Z_]*\s*[:=]\s*['\"]?(?!/run/secrets/|\$\{|\s|$|['\"]|<)(\S{6,})",
    re.IGNORECASE,
)


def test_no_secret_literal_in_stack_files() -> None:
    files = [
        *COMPOSE_FILES,
        DEV_COMPOSE,
        REPO / ".env.example",
        REPO / "Dockerfile",
        *sorted((REPO / "traefik").rglob("*.yml")),
    ]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            match = LITERAL_SECRET.search(line)
            if match and not line.lstrip().startswith("#"):
                pytest.fail(f"{path.relative_to(REPO)}:{number}: looks like a secret value: {line.strip()}")


# --- configuration coverage ---------------------------------------------------------------------------------


# Every variable the app reads: its declared settings, and the NAME_FILE form of the secret ones.
APP_VARIABLES = {variable for setting in SETTINGS for variable in setting.variables}


def test_app_reads_the_variables_compose_and_the_docs_are_checked_against() -> None:
    # The coverage tests below are only as good as this set: it comes from the app's declaration (which
    # tests/app checks load_config reads), so a new setting is checked against compose and .env.example
    # without anyone listing it here.
    names = APP_VARIABLES
    assert {"DATABASE_URL", "DATABASE_URL_FILE", "SECRET_KEY_FILE", "TRUSTED_PROXY_HOPS"} <= names
    assert {"GUNICORN_GRACEFUL_TIMEOUT", "DATABASE_PASSWORD", "BUILD_NUMBER", "PORT"} <= names


def test_every_app_variable_is_documented_in_env_example() -> None:
    example = (REPO / ".env.example").read_text()
    missing = sorted(n for n in APP_VARIABLES if not re.search(rf"\b{n}\b", example))
    assert not missing, f".env.example does not mention {missing}"


def test_compose_and_env_example_defaults_are_the_apps() -> None:
    """Where compose passes a setting through from .env, its fallback and .env.example's line are the
    app's declared default (unset and empty mean the same to the app)."""
    example = (REPO / ".env.example").read_text()
    passed = {}
    for path in [*COMPOSE_FILES, DEV_COMPOSE]:
        for name, fallback in re.findall(r"\$\{([A-Z_][A-Z0-9_]*):-([^}]*)\}", path.read_text()):
            if name in SETTINGS_BY_NAME:
                passed[name] = fallback
    assert {"LOG_LEVEL", "DB_POOL_SIZE", "GUNICORN_GRACEFUL_TIMEOUT", "SENTRY_DSN"} <= set(passed)
    for name, fallback in sorted(passed.items()):
        default = SETTINGS_BY_NAME[name].default
        assert fallback == (default or ""), f"compose falls back to {name}={fallback!r}, the app to {default!r}"
        if default is not None:
            assert re.search(rf"^# {name}={re.escape(default)}$", example, re.M), f".env.example: # {name}={default}"


# Read by the app but deliberately not passed through from .env: the direct secret forms (compose uses
# the *_FILE ones), build metadata and the listen address baked into the image, and the alternative *_FILE
# forms.
NOT_PASSED_THROUGH = {
    "DATABASE_PASSWORD",
    "SECRET_KEY",
    "DATABASE_URL_FILE",
    "SENTRY_DSN_FILE",
    "BUILD_NUMBER",
    "GIT_COMMIT",
    "BIND_ADDRESS",
    "DB_APP_PASSWORD",
    "DB_BACKUP_PASSWORD",
    "DB_EXPORTER_PASSWORD",
}


# Read only by the migration job (app/migrations/env.py).
# The roles' passwords too: only the migration job sets them (app/roles.py).
MIGRATE_ONLY = {
    "MIGRATION_LOCK_TIMEOUT_MS",
    "MIGRATION_LOCK_ATTEMPTS",
    "DB_APP_PASSWORD_FILE",
    "DB_BACKUP_PASSWORD_FILE",
    "DB_EXPORTER_PASSWORD_FILE",
}


def test_every_app_variable_reaches_the_app(services: dict[str, Any]) -> None:
    env = set(services["app"]["environment"])
    missing = sorted(APP_VARIABLES - NOT_PASSED_THROUGH - MIGRATE_ONLY - env)
    assert not missing, f"compose never passes {missing} to the app"
    assert set(services["migrate"]["environment"]) >= MIGRATE_ONLY


def test_only_the_migrate_job_holds_the_superuser_password(services: dict[str, Any]) -> None:
    """Every other database client logs in as its own least-privilege role (app/roles.py)."""
    holders = {
        name
        for name, service in services.items()
        for volume in service.get("volumes") or []
        if volume.get("source") == "secrets" and (volume.get("volume") or {}).get("subpath") == "postgres_password"
    }
    assert holders == {"migrate", "postgres"}
    assert services["app"]["environment"]["DATABASE_URL"].startswith("postgresql+psycopg2://tally_app@")
    assert services["backup"]["environment"]["PGUSER"] == "tally_backup"
    assert services["postgres-exporter"]["environment"]["DATA_SOURCE_USER"] == "tally_exporter"
    role_secrets = {"DB_APP_PASSWORD_FILE", "DB_BACKUP_PASSWORD_FILE", "DB_EXPORTER_PASSWORD_FILE"}
    assert role_secrets <= set(services["migrate"]["environment"])


def test_every_compose_variable_is_documented_in_env_example() -> None:
    example = (REPO / ".env.example").read_text()
    used: set[str] = set()
    for path in [*COMPOSE_FILES, DEV_COMPOSE]:
        used |= set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", path.read_text()))
    used.discard("COMPOSE_PROJECT_NAME")  # set by Compose itself
    missing = sorted(v for v in used if not re.search(rf"^#? ?{v}=", example, re.MULTILINE))
    assert not missing, f".env.example lacks {missing}"


# --- database connection budget -----------------------------------------------------------------------------

# Connections Postgres must keep for clients other than the app replicas (docs/stack.md has the table).
MIGRATE_CONNECTIONS = 2  # alembic + the advisory-lock session
EXPORTER_CONNECTIONS = 2  # postgres_exporter
BACKUP_CONNECTIONS = 4  # pg_dump, verify's restore and checks
ADMIN_HEADROOM = 5  # psql sessions of an operator
SUPERUSER_RESERVED = 3  # Postgres default superuser_reserved_connections


def connection_budget(model: dict[str, Any]) -> tuple[int, int]:
    env = model["services"]["app"]["environment"]
    replicas = int(model["services"]["app"]["deploy"]["replicas"])
    per_replica = int(env["WEB_CONCURRENCY"]) * (int(env["DB_POOL_SIZE"]) + int(env["DB_MAX_OVERFLOW"]))
    # A rolling deploy (scripts/deploy.sh) runs one extra replica while it replaces the others.
    needed = (
        (replicas + 1) * per_replica
        + MIGRATE_CONNECTIONS
        + EXPORTER_CONNECTIONS
        + BACKUP_CONNECTIONS
        + ADMIN_HEADROOM
        + SUPERUSER_RESERVED
    )
    command = model["services"]["postgres"]["command"]
    max_connections = int(next(a.split("=", 1)[1] for a in command if a.startswith("max_connections=")))
    return needed, max_connections


def test_max_connections_covers_replicas_workers_and_pools(model: dict[str, Any]) -> None:
    needed, available = connection_budget(model)
    assert needed <= available, f"need {needed} connections, max_connections={available}"


def test_documented_replica_ceiling_is_the_computed_one(model: dict[str, Any]) -> None:
    needed_now, available = connection_budget(model)
    replicas = int(model["services"]["app"]["deploy"]["replicas"])
    env = model["services"]["app"]["environment"]
    per_replica = int(env["WEB_CONCURRENCY"]) * (int(env["DB_POOL_SIZE"]) + int(env["DB_MAX_OVERFLOW"]))
    ceiling = replicas + (available - needed_now) // per_replica
    # Checked through the real renderer on both sides of the boundary.
    fits, _ = connection_budget(render({"APP_REPLICAS": str(ceiling)}))
    too_many, _ = connection_budget(render({"APP_REPLICAS": str(ceiling + 1)}))
    assert fits <= available < too_many
    docs = (REPO / "docs" / "stack.md").read_text()
    assert f"at most {ceiling} replicas" in docs, f"docs/stack.md must state the ceiling: at most {ceiling} replicas"
