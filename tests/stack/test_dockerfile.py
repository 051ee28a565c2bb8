"""The Dockerfile: lint (hadolint, checkov), its contract (base pin, user, healthcheck, command, build
metadata) and what the build context may contain (.dockerignore)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from .stackutil import (
    REPO,
    checkov_binary,
    dockerfile_instructions,
    dockerfile_stages,
    exec_form,
    expand,
    final_stage,
    hadolint_binary,
    image_env,
    run,
)

DOCKERFILE = REPO / "Dockerfile"


def test_hadolint_clean() -> None:
    result = run([hadolint_binary(), "--no-color", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_not_a_no_op(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\n")
    assert run([hadolint_binary(), "--no-color", str(bad)]).returncode != 0


@pytest.mark.slow
def test_checkov_has_no_failed_check() -> None:
    result = run(
        [
            checkov_binary(),
            "-f",
            str(DOCKERFILE),
            "--framework",
            "dockerfile",
            "--skip-download",
            "--quiet",
            "--compact",
            "--output",
            "cli",
        ],
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Passed checks:" in result.stdout and "Failed checks: 0" in result.stdout, result.stdout
    # Every skip carries its reason.
    for match in re.finditer(r"checkov:skip=(CKV\w+)(?::(.*))?", DOCKERFILE.read_text()):
        assert match.group(2) and len(match.group(2).strip()) > 20, f"{match.group(1)} skipped without a reason"


def test_base_image_is_the_pinned_slim_python_of_our_minor() -> None:
    args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    base = args["PYTHON_IMAGE"]
    match = re.fullmatch(r"python:(3)\.(\d+)\.(\d+)-slim-bookworm", base)
    assert match, f"base {base!r} must be an exact python:3.X.Y-slim-bookworm tag"
    assert (int(match.group(1)), int(match.group(2))) == sys.version_info[:2], "image and tested Python differ"
    for stage in stages:
        assert expand(stage.base, args) == base, f"stage {stage.name} does not use the pinned base"


def test_runtime_stage_has_no_compiler_or_package_install() -> None:
    _, stage = final_stage()
    runs = " ".join(i.value for i in stage.all("RUN"))
    for word in ("apt-get", "apt ", "gcc", "build-essential", "pip install", "make "):
        assert word not in runs, f"runtime stage runs {word!r}"
    copies = [i.value for i in stage.all("COPY")]
    assert any("--from=builder" in c for c in copies), "dependencies come from the builder stage"


def test_dependencies_come_from_the_lock_only() -> None:
    _, stages = dockerfile_stages()
    runs = " ".join(i.value for s in stages for i in s.all("RUN"))
    installs = re.findall(r"pip install ([^&]+)", runs)
    assert installs, "no pip install found"
    for cmd in installs:
        assert "--no-deps" in cmd and "--require-hashes" in cmd and "requirements.lock" in cmd, cmd


@pytest.mark.parametrize("name", ["requirements.lock", "requirements-dev.lock"])
def test_the_lock_pins_every_package_with_hashes(name: str) -> None:
    """--require-hashes refuses a lock without them; this says which package lost its hashes."""
    lock = (REPO / name).read_text()
    entries = re.split(r"\n(?=[a-z0-9])", lock)
    packages = [e for e in entries if re.match(r"[a-z0-9][a-z0-9._-]*(\[[a-z0-9,._-]+\])?==", e)]
    assert len(packages) >= 15
    for entry in packages:
        assert "--hash=sha256:" in entry, entry.splitlines()[0]
    makefile = (REPO / "Makefile").read_text()
    assert f"--require-hashes -r {name}" in makefile
    assert re.search(rf"pip-compile [^\n]*--generate-hashes [^\n]*-o {re.escape(name)} ", makefile)


def test_runs_as_a_fixed_non_root_user() -> None:
    _, stage = final_stage()
    user = stage.all("USER")[-1].value
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit(), user
    assert f"--uid {uid}" in " ".join(i.value for i in stage.all("RUN"))


def test_command_is_exec_form_gunicorn_with_the_repo_config() -> None:
    _, stage = final_stage()
    cmd = exec_form(stage.all("CMD")[-1].value)
    assert cmd[0] == "gunicorn" and "app:create_app()" in cmd
    config = cmd[cmd.index("--config") + 1]
    assert (REPO / config).is_file()
    assert not stage.all("ENTRYPOINT"), "gunicorn must be PID 1 (no wrapper entrypoint)"
    assert stage.all("STOPSIGNAL")[-1].value == "SIGTERM"
    workdir = stage.all("WORKDIR")[-1].value
    assert workdir == "/srv/tally"


def test_healthcheck_probes_healthz_on_the_app_port() -> None:
    _, stage = final_stage()
    value = stage.all("HEALTHCHECK")[-1].value
    options, _, command = value.partition("CMD ")
    probe = exec_form(command)
    assert probe[0] == "python", "slim has no curl: the probe is Python"
    assert "/healthz" in probe[-1] and "'PORT', '8000'" in probe[-1]
    assert re.search(r"--interval=\d+s", options) and re.search(r"--timeout=\d+s", options)
    assert "8000" in stage.all("EXPOSE")[-1].value.split()


def test_the_container_listens_on_every_interface_of_its_namespace() -> None:
    # The app binds loopback unless asked (local development); Traefik reaches a replica on its
    # container address, so the image asks.
    _, stage = final_stage()
    from app.config import load_config

    image = {"TALLY_ENV": "development"} | {k: v for k, v in image_env(stage).items() if k == "BIND_ADDRESS"}
    assert load_config(image).bind == "0.0.0.0:8000"


def test_build_metadata_is_baked_in() -> None:
    _, stage = final_stage()
    env = image_env(stage)
    assert {"BUILD_NUMBER", "GIT_COMMIT"} <= set(env)
    assert env["TALLY_ENV"] == "production"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/"), "multiprocess files must be on the tmpfs"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    labels = " ".join(i.value for i in stage.all("LABEL"))
    for key in (
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.source",
        "org.opencontainers.image.title",
        "org.opencontainers.image.base.name",
    ):
        assert key in labels, key
    args = {i.value.split("=")[0] for i in stage.all("ARG")}
    assert {"VERSION", "BUILD_NUMBER", "GIT_COMMIT", "SOURCE_URL"} <= args
    assert "version.txt" in " ".join(i.value for i in stage.all("RUN")), "VERSION is checked against version.txt"


def test_copied_sources_exist() -> None:
    for ins in dockerfile_instructions():
        if ins.keyword == "COPY" and "--from=" not in ins.value:
            *sources, _ = ins.value.split()
            for source in sources:
                assert (REPO / source).exists(), source


# --- .dockerignore ------------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Docker's matcher: filepath.Match per segment, plus `**` for any number of directories.
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip("/"))
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def in_context(path: str) -> bool:
    """True when `path` (relative, /-separated) is sent to the builder: the last matching rule wins, and a
    rule matching a parent directory matches the file (Docker's MatchesOrParentMatches)."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for negate, regex in dockerignore_rules():
        if any(regex.match(c) for c in candidates):
            included = negate
    return included


def test_dockerignore_keeps_private_and_useless_files_out() -> None:
    for path in (
        ".git/config",
        ".env",
        ".env.production",
        "secrets/secret_key",
        "secrets/README.md",
        "tests/stack/test_dockerfile.py",
        "docs/stack.md",
        "infra/terraform/main.tf",
        ".venv/bin/python",
        "node_modules/x/index.js",
        ".tools/checkov/bin/checkov",
        "instance/tally-dev.sqlite3",
        "app/__pycache__/views.cpython-311.pyc",
        "app/.env",
        ".pytest_cache/v/x",
        "app/x.sqlite3",
        "compose.yaml",
        "Makefile",
        "loadtest/locustfile.py",
    ):
        assert not in_context(path), f"{path} would be sent to the builder"


def test_dockerignore_lets_the_image_inputs_through() -> None:
    for path in (
        "requirements.lock",
        "gunicorn.conf.py",
        "version.txt",
        "app/__init__.py",
        "app/templates/index.html",
        "app/migrations/env.py",
    ):
        assert in_context(path), f"{path} is needed by the Dockerfile but ignored"
    for ins in dockerfile_instructions():
        if ins.keyword == "COPY" and "--from=" not in ins.value:
            *sources, _ = ins.value.split()
            for source in sources:
                assert in_context(source.rstrip("/")), source
    # The whole real app package is in the context (nothing under app/ but caches is dropped).
    for file in (REPO / "app").rglob("*"):
        rel = file.relative_to(REPO).as_posix()
        if file.is_file() and "__pycache__" not in rel and not rel.endswith((".pyc", ".sqlite3")):
            assert in_context(rel), rel
