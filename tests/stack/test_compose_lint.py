"""Compose files: valid for Compose itself, for the Compose specification schema, and lint-clean."""

from __future__ import annotations

import pytest

from .stackutil import (
    COMPOSE_FILES,
    DEV_COMPOSE,
    REPO,
    check_jsonschema_binary,
    compose_binary,
    dclint_binary,
    render,
    run,
)

ALL_FILES = [*COMPOSE_FILES, DEV_COMPOSE]


def test_production_stack_renders_with_every_include() -> None:
    model = render()
    included = {p.name for p in COMPOSE_FILES} - {"compose.yaml", "common.yaml"}
    raw_includes = {
        line.split("#")[0].strip().removeprefix("- ").removeprefix("compose/")
        for line in (REPO / "compose.yaml").read_text().splitlines()
        if line.strip().startswith("- compose/")
    }
    # Every per-concern file is included (a forgotten file would silently drop its services).
    assert raw_includes == included
    assert model["name"] == "tally"
    assert {
        "traefik",
        "socket-proxy",
        "app",
        "migrate",
        "postgres",
        "prometheus",
        "alertmanager",
        "grafana",
        "postgres-exporter",
        "node-exporter",
        "cadvisor",
        "blackbox",
    } <= set(model["services"])


def test_dev_stack_renders() -> None:
    model = render(files=(DEV_COMPOSE,))
    assert {"app", "migrate", "postgres"} <= set(model["services"])


def test_compose_files_match_the_compose_specification() -> None:
    result = run([check_jsonschema_binary(), "--builtin-schema", "vendor.compose-spec", *map(str, ALL_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_dclint_reports_nothing() -> None:
    result = run(
        [
            dclint_binary(),
            "-c",
            str(REPO / ".dclintrc.yaml"),
            "--max-warnings",
            "0",
            "--color",
            "false",
            *map(str, ALL_FILES),
        ]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_config_fails_on_a_broken_reference(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The renderer is the oracle of every other test here: prove it rejects what `up` would reject.
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  a:\n    image: busybox:1.36\n    depends_on: [missing]\n")
    result = run([compose_binary(), "-f", str(broken), "config"], cwd=tmp_path)
    assert result.returncode != 0
    assert "missing" in result.stderr
