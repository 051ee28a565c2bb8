"""Traefik: static flags, dynamic files and the routers declared in labels reference each other correctly."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from .stackutil import REPO, flags, load_yaml, render

DYNAMIC = sorted((REPO / "traefik" / "dynamic").glob("*.yml"))
LE_ENV = {"DOMAIN": "tally.example.com", "ACME_EMAIL": "ops@example.com"}

# Keys the file provider accepts at each level we use (typos are silently ignored by Traefik).
KNOWN_MIDDLEWARE_TYPES = {
    "chain",
    "ipAllowList",
    "headers",
    "rateLimit",
    "retry",
    "redirectScheme",
    "stripPrefix",
    "compress",
    "basicAuth",
}
KNOWN_HEADER_KEYS = {
    "stsSeconds",
    "stsIncludeSubdomains",
    "stsPreload",
    "forceSTSHeader",
    "contentTypeNosniff",
    "frameDeny",
    "referrerPolicy",
    "permissionsPolicy",
    "customResponseHeaders",
    "contentSecurityPolicy",
    "customRequestHeaders",
}
KNOWN_TLS_OPTION_KEYS = {
    "minVersion",
    "maxVersion",
    "cipherSuites",
    "curvePreferences",
    "sniStrict",
    "alpnProtocols",
    "clientAuth",
}
TLS_CIPHERS = {
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
}


def dynamic_config() -> dict[str, Any]:
    merged: dict[str, Any] = {"http": {"middlewares": {}}, "tls": {"options": {}}}
    for path in DYNAMIC:
        doc = load_yaml(path) or {}
        assert set(doc) <= {"http", "tls"}, f"{path.name}: unexpected top-level keys {set(doc)}"
        for name, mw in ((doc.get("http") or {}).get("middlewares") or {}).items():
            assert name not in merged["http"]["middlewares"], f"middleware {name} defined twice"
            merged["http"]["middlewares"][name] = mw
        merged["tls"]["options"].update(((doc.get("tls") or {}).get("options")) or {})
    return merged


def static_flags(model: dict[str, Any]) -> dict[str, str]:
    return flags(model["services"]["traefik"]["command"])


def routers(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """router name -> {attributes..., 'container': service, 'labels': all labels of that service}."""
    found: dict[str, dict[str, Any]] = {}
    for name, svc in model["services"].items():
        labels = svc.get("labels") or {}
        for key, value in labels.items():
            match = re.fullmatch(r"traefik\.http\.routers\.([\w-]+)\.(.+)", key)
            if match:
                router = found.setdefault(match.group(1), {"container": name, "labels": labels})
                assert router["container"] == name, f"router {match.group(1)} defined on two services"
                router[match.group(2).lower()] = value
    return found


@pytest.fixture(scope="module", params=["self-signed", "letsencrypt"])
def model(request: pytest.FixtureRequest) -> dict[str, Any]:
    return render(LE_ENV if request.param == "letsencrypt" else {})


def test_dynamic_files_are_well_formed() -> None:
    assert DYNAMIC, "traefik/dynamic/*.yml missing"
    dyn = dynamic_config()
    for name, mw in dyn["http"]["middlewares"].items():
        assert len(mw) == 1 and set(mw) <= KNOWN_MIDDLEWARE_TYPES, f"{name}: {set(mw)}"
        if "headers" in mw:
            assert set(mw["headers"]) <= KNOWN_HEADER_KEYS, f"{name}: {set(mw['headers']) - KNOWN_HEADER_KEYS}"
        if "chain" in mw:
            for child in mw["chain"]["middlewares"]:
                assert child in dyn["http"]["middlewares"] and child != name, f"{name} -> {child}"


def test_tls_policy() -> None:
    options = dynamic_config()["tls"]["options"]
    default = options["default"]
    assert set(default) <= KNOWN_TLS_OPTION_KEYS
    assert default["minVersion"] in ("VersionTLS12", "VersionTLS13")
    assert set(default.get("cipherSuites", [])) <= TLS_CIPHERS


def test_security_chain_contents() -> None:
    mws = dynamic_config()["http"]["middlewares"]
    chain = mws["tally-chain"]["chain"]["middlewares"]
    kinds = {next(iter(mws[c])) for c in chain}
    assert {"headers", "rateLimit"} <= kinds
    headers = next(mws[c]["headers"] for c in chain if "headers" in mws[c])
    assert headers["stsSeconds"] >= 15552000 and headers["contentTypeNosniff"] and headers["frameDeny"]


def test_static_configuration(model: dict[str, Any]) -> None:
    f = static_flags(model)
    assert f["providers.docker.endpoint"] == "tcp://socket-proxy:2375", "Traefik must use the socket proxy"
    assert f["providers.docker.exposedbydefault"] == "false"
    assert f["providers.docker.network"] == f"{model['name']}_edge"
    assert model["networks"]["edge"]["name"] == f["providers.docker.network"]
    assert not any(k == "api" or k.startswith("api.") for k in f), "API/dashboard must stay off (or be behind auth)"
    assert f["accesslog.format"] == "json" and f["log.format"] == "json"
    assert f["accesslog.fields.names.clienthost"] == "drop" and f["accesslog.fields.headers.defaultmode"] == "drop"
    assert f["entrypoints.web.http.redirections.entrypoint.scheme"] == "https"
    assert f["entrypoints.web.http.redirections.entrypoint.to"] == ":443"
    assert f["metrics.prometheus.entrypoint"] in {k.split(".")[1] for k in f if k.endswith(".address")}
    assert f["global.sendanonymoususage"] == "false" and f["global.checknewversion"] == "false"
    volumes = {v["target"]: v for v in model["services"]["traefik"]["volumes"]}
    assert volumes[f["providers.file.directory"]]["source"] == str(REPO / "traefik" / "dynamic")


def test_published_ports_are_the_public_entrypoints_only(model: dict[str, Any]) -> None:
    f = static_flags(model)
    addresses = {
        name.split(".")[1]: int(v.rsplit(":", 1)[1])
        for name, v in f.items()
        if name.startswith("entrypoints.") and name.endswith(".address")
    }
    published = {int(p["target"]): int(p["published"]) for p in model["services"]["traefik"]["ports"]}
    assert set(published) == {addresses["web"], addresses["websecure"]}
    assert addresses["metrics"] not in published


def test_metrics_and_ping_are_routed_by_hand_behind_the_allow_list(model: dict[str, Any]) -> None:
    """With manual routing the internal services exist only through the routers of metrics.yml, each of them
    on the metrics entrypoint behind the allow-list Traefik fills from its METRICS_ALLOWED_CIDRS."""
    f = static_flags(model)
    assert f["metrics.prometheus.manualrouting"] == "true" and f["ping.manualrouting"] == "true"
    doc = load_yaml(REPO / "traefik" / "dynamic" / "metrics.yml")
    routers = doc["http"]["routers"]
    assert {r["service"] for r in routers.values()} == {"prometheus@internal", "ping@internal"}
    for name, router in routers.items():
        assert router["entryPoints"] == [f["metrics.prometheus.entrypoint"]] == [f["ping.entrypoint"]], name
        assert router["middlewares"] == ["metrics-clients"], name
    allow = doc["http"]["middlewares"]["metrics-clients"]["ipAllowList"]
    # The TCP peer, never a header: no ipStrategy.
    assert set(allow) == {"sourceRange"}
    assert allow["sourceRange"] == '{{ env "METRICS_ALLOWED_CIDRS" | default "127.0.0.1/32,::1/128" }}'
    assert "METRICS_ALLOWED_CIDRS" in model["services"]["traefik"]["environment"]


def test_healthcheck_matches_the_ping_entrypoint(model: dict[str, Any]) -> None:
    f = static_flags(model)
    hc = flags(model["services"]["traefik"]["healthcheck"]["test"][3:])
    assert f["ping"] == "true"
    entrypoint = f["ping.entrypoint"]
    assert hc["ping.entrypoint"] == entrypoint
    assert hc[f"entrypoints.{entrypoint}.address"] == f[f"entrypoints.{entrypoint}.address"]


def test_routers_reference_existing_things(model: dict[str, Any]) -> None:
    f = static_flags(model)
    entrypoints = {k.split(".")[1] for k in f if k.startswith("entrypoints.") and k.endswith(".address")}
    resolvers = {k.split(".")[1] for k in f if k.startswith("certificatesresolvers.")}
    file_middlewares = set(dynamic_config()["http"]["middlewares"])
    found = routers(model)
    assert set(found) == {"tally", "grafana"}
    for name, router in found.items():
        svc = model["services"][router["container"]]
        labels = router["labels"]
        assert labels.get("traefik.enable") == "true", name
        assert set(router["entrypoints"].split(",")) <= entrypoints, name
        assert router["entrypoints"] == "websecure" and router["tls"] == "true", f"{name}: TLS only"
        resolver = router.get("tls.certresolver", "")
        assert resolver == "" or resolver in resolvers, f"{name}: unknown resolver {resolver}"
        middlewares = router["middlewares"].split(",")
        # One chain (tally-chain, or the app's tally-page-chain built on it), last, so nothing can skip it.
        assert middlewares[-1] in ("tally-chain@file", "tally-page-chain@file"), f"{name}: got {middlewares}"
        for mw in middlewares:
            base, _, provider = mw.partition("@")
            if provider == "file":
                assert base in file_middlewares, f"{name}: {mw}"
            else:
                assert provider in ("", "docker") and any(
                    k.startswith(f"traefik.http.middlewares.{base}.")
                    for s in model["services"].values()
                    for k in (s.get("labels") or {})
                ), f"{name}: {mw}"
        service = router["service"]
        port = labels.get(f"traefik.http.services.{service}.loadbalancer.server.port")
        assert port, f"{name}: service {service} has no port on {router['container']}"
        assert labels.get(f"traefik.http.services.{service}.loadbalancer.healthcheck.path"), name
        network = labels.get("traefik.docker.network") or f["providers.docker.network"]
        assert network.rsplit("_", 1)[1] in (svc.get("networks") or {}), name


def test_headers_hsts_two_years_with_subdomains_and_a_strict_page_csp() -> None:
    mws = dynamic_config()["http"]["middlewares"]
    headers = mws["security-headers"]["headers"]
    assert headers["stsSeconds"] >= 63072000 and headers["stsIncludeSubdomains"] is True
    assert headers["stsPreload"] is False, "preload is the operator's decision (hstspreload.org)"
    assert mws["tally-page-chain"]["chain"]["middlewares"] == ["tally-chain", "page-csp"]
    policy = mws["page-csp"]["headers"]["contentSecurityPolicy"]
    csp = {part.split()[0]: part.split()[1:] for part in policy.split(";")}
    assert csp["default-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert "script-src" not in csp and "'unsafe-inline'" not in str(csp)


def test_grafana_is_not_public_by_default(model: dict[str, Any]) -> None:
    grafana = model["services"]["grafana"]
    labels = grafana["labels"]
    assert labels["traefik.http.routers.grafana.middlewares"].split(",")[0] == "grafana-allowlist"
    assert labels["traefik.http.middlewares.grafana-allowlist.ipallowlist.sourcerange"] == "127.0.0.1/32"
    assert [p["host_ip"] for p in grafana["ports"]] == ["127.0.0.1"], "only the SSH tunnel's loopback end"
    allowed = "203.0.113.0/24,198.51.100.7/32"
    opened = render({"GRAFANA_ALLOWED_IPS": allowed})["services"]["grafana"]["labels"]
    assert opened["traefik.http.middlewares.grafana-allowlist.ipallowlist.sourcerange"] == allowed


def test_app_router_targets_the_app_port_and_readiness(model: dict[str, Any]) -> None:
    app = model["services"]["app"]
    labels = app["labels"]
    assert labels["traefik.http.services.tally.loadbalancer.server.port"] == app["environment"]["PORT"]
    assert labels["traefik.http.services.tally.loadbalancer.healthcheck.path"] == "/readyz"
    assert app["environment"]["METRICS_PORT"] != app["environment"]["PORT"], "/metrics must not be routable"


def test_letsencrypt_only_with_domain_and_email() -> None:
    cases = [
        ({}, "localhost", ""),
        ({"ACME_EMAIL": "ops@example.com"}, "localhost", ""),
        ({"DOMAIN": "tally.example.com"}, "tally.example.com", ""),
        (LE_ENV, "tally.example.com", "letsencrypt"),
    ]
    for env, host, resolver in cases:
        model = render(env)
        for name, router in routers(model).items():
            assert f"Host(`{host}`)" in router["rule"], (env, name)
            assert router.get("tls.certresolver", "") == resolver, (env, name)
        f = static_flags(model)
        assert f["certificatesresolvers.letsencrypt.acme.email"] == env.get("ACME_EMAIL", "")
        assert f["certificatesresolvers.letsencrypt.acme.storage"].startswith("/letsencrypt/")
        aliases = model["services"]["traefik"]["networks"]["edge"]["aliases"]
        assert aliases == [env.get("DOMAIN", "traefik")]


def test_acme_storage_is_a_volume_owned_by_traefiks_user() -> None:
    model = render()
    traefik, init = model["services"]["traefik"], model["services"]["acme-init"]
    storage = {v["target"]: v for v in traefik["volumes"]}["/letsencrypt"]
    assert storage["type"] == "volume"
    init_volume = {v["target"]: v for v in init["volumes"]}["/letsencrypt"]
    assert init_volume["source"] == storage["source"]
    assert init["entrypoint"][:2] == ["chown", traefik["user"]]
    assert traefik["depends_on"]["acme-init"]["condition"] == "service_completed_successfully"


def test_grafana_is_served_under_its_router_path() -> None:
    model = render(LE_ENV)
    grafana = model["services"]["grafana"]
    env = grafana["environment"]
    rule = grafana["labels"]["traefik.http.routers.grafana.rule"]
    prefix = re.search(r"PathPrefix\(`([^`]+)`\)", rule).group(1)  # type: ignore[union-attr]
    assert env["GF_SERVER_ROOT_URL"] == f"https://tally.example.com:443{prefix}/"
    assert env["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert grafana["labels"]["traefik.http.services.grafana.loadbalancer.healthcheck.path"].startswith(prefix + "/")
    assert prefix + "/" in " ".join(grafana["healthcheck"]["test"])


def test_socket_proxy_is_read_only_and_allow_listed() -> None:
    model = render()
    proxy = model["services"]["socket-proxy"]
    args = proxy["command"]
    assert not any(a.lower().startswith(("-allowpost", "-allowput", "-allowdelete", "-allowpatch")) for a in args)
    get = next(a.split("=", 1)[1] for a in args if a.startswith("-allowGET="))
    pattern = re.compile(f"^(?:{get})$")
    for allowed in (
        "/v1.47/containers/json",
        "/v1.47/containers/abc123/json",
        "/v1.47/events",
        "/_ping",
        "/v1.47/version",
    ):
        assert pattern.match(allowed), allowed
    for denied in (
        "/v1.47/containers/abc/logs",
        "/v1.47/containers/abc/archive",
        "/v1.47/containers/abc/export",
        "/v1.47/images/json",
        "/v1.47/secrets",
    ):
        assert not pattern.match(denied), denied
    clients = set(next(a.split("=", 1)[1] for a in args if a.startswith("-allowfrom=")).split(","))
    on_socket = {n for n, s in model["services"].items() if "socket" in (s.get("networks") or {})} - {"socket-proxy"}
    assert clients == on_socket
    assert Path("/var/run/docker.sock") in {Path(v["source"]) for v in proxy["volumes"]}


def test_ports_are_published_where_traefik_sees_the_real_client(model: dict[str, Any]) -> None:
    # A port published on IPv6 into an IPv4-only network goes through Docker's userland proxy: every IPv6
    # visitor would arrive as the gateway address. Publish on IPv4 only unless the edge network has IPv6.
    edge = model["networks"]["edge"]
    for port in model["services"]["traefik"]["ports"]:
        if not edge.get("enable_ipv6"):
            assert port.get("host_ip") == "0.0.0.0", port


FORWARDING_TIMEOUT_KEYS = {"dialTimeout", "responseHeaderTimeout", "idleConnTimeout", "readIdleTimeout", "pingTimeout"}


def test_app_service_uses_a_defined_transport_with_timeouts(model: dict[str, Any]) -> None:
    transports: dict[str, Any] = {}
    for path in DYNAMIC:
        transports.update(((load_yaml(path) or {}).get("http") or {}).get("serversTransports") or {})
    name = model["services"]["app"]["labels"]["traefik.http.services.tally.loadbalancer.serverstransport"]
    base, _, provider = name.partition("@")
    assert provider == "file" and base in transports, name
    timeouts = transports[base]["forwardingTimeouts"]
    # Traefik ignores unknown keys silently: a typo would bring back the 30 s dial and no response timeout.
    assert set(timeouts) <= FORWARDING_TIMEOUT_KEYS, set(timeouts) - FORWARDING_TIMEOUT_KEYS
    assert {"dialTimeout", "responseHeaderTimeout", "idleConnTimeout"} <= set(timeouts)
