"""The docs are part of the product: links resolve, commands exist, the README's commands that can run
here do what it says, version examples agree, the configuration table matches the code, and every
Mermaid diagram parses and has a rendered copy for viewers without Mermaid."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import SETTINGS
from harness import REPO_ROOT
from harness.docs import CODE_BLOCK, DIAGRAMS, MARKDOWN, mermaid_blocks
from harness.docs import doc_name as _id
from harness.procs import free_port

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE_TARGET = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][a-z0-9-]*)")
SCRIPT = re.compile(r"(?:\./)?((?:scripts|drills|bench|loadtest|backup/bin|tests/e2e)/[\w./-]+\.(?:sh|py))")


def test_there_are_docs_to_check() -> None:
    names = {_id(path) for path in MARKDOWN}
    assert {"README.md", "docs/architecture.md", "docs/stack.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        file_part = target.split("#", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{_id(path)} links to missing files: {broken}"


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_commands_in_code_blocks_exist(path: Path) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    missing = []
    for _lang, body in CODE_BLOCK.findall(path.read_text()):
        missing += [f"make {t}" for t in MAKE_TARGET.findall(body) if t not in targets]
        missing += [s for s in SCRIPT.findall(body) if not (REPO_ROOT / s).exists()]
    assert not missing, f"{_id(path)} names commands that do not exist: {missing}"


def test_configuration_table_is_the_declared_settings() -> None:
    # The README documents NAME once; its NAME_FILE form is explained above the table.
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    declared = [f"| `{s.name}` | {s.readme_default} | {s.doc} |" for s in SETTINGS]
    assert rows == declared, "the README table is not app/config.py's SETTINGS; its rows are:\n" + "\n".join(declared)


def test_every_diagram_has_a_rendered_copy() -> None:
    blocks = mermaid_blocks()
    assert len(blocks) >= 2, "README and docs/architecture.md carry Mermaid diagrams"
    for name, source in blocks:
        kept = DIAGRAMS / f"{name}.mmd"
        assert kept.exists() and (DIAGRAMS / f"{name}.svg").exists(), f"run scripts/render-diagrams.sh ({name})"
        assert kept.read_text() == source, f"{name}.svg is stale: run scripts/render-diagrams.sh"
        # mermaid-cli renders what it cannot parse as an error picture; the script stops on its exit status too.
        assert "Syntax error" not in (DIAGRAMS / f"{name}.svg").read_text(), f"{name}: Mermaid cannot parse it"


# --- the README, run as a new user would ------------------------------------------------------------------

README = (REPO_ROOT / "README.md").read_text()
VERSION_EXAMPLE = re.compile(r"\b(\d+\.\d+\.\d+)[-+]build\.(\d+)\b")


def readme_command(command: str) -> str:
    """``command`` exactly as the README shows it (in backticks or a code block), so the two cannot drift."""
    blocks = "\n".join(body for _lang, body in CODE_BLOCK.findall(README))
    assert f"`{command}`" in README or command in blocks, f"the README no longer shows {command!r}"
    return command


def run_shell(command: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TALLY_", "DATABASE_", "MAKE", "MFLAGS"))}
    # The README's own command lines, run as a user types them into a shell.
    return subprocess.run(  # noqa: S602
        command, shell=True, cwd=REPO_ROOT, env=base | env, capture_output=True, text=True, timeout=120
    )


def test_make_help_lists_the_targets_the_readme_uses() -> None:
    result = run_shell(readme_command("make help"))
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^  ([a-z0-9-]+) ", result.stdout, re.M))
    used = {t for _lang, body in CODE_BLOCK.findall(README) for t in MAKE_TARGET.findall(body)}
    used |= set(re.findall(r"`make ([a-z0-9-]+)", README))
    assert used <= listed, used - listed
    assert "http://127.0.0.1:8000" in result.stdout


def test_the_migration_command_migrates(tmp_path: Path) -> None:
    database = tmp_path / "dev.sqlite3"
    result = run_shell(readme_command("make migrate"), DATABASE_URL=f"sqlite:///{database}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    # The long form the README gives for the venv's flask works as written, with the same environment.
    direct = run_shell(
        f"TALLY_ENV=development {readme_command('.venv/bin/flask --app app db upgrade')}",
        DATABASE_URL=f"sqlite:///{database}",
    )
    assert direct.returncode == 0, direct.stderr[-2000:]


def test_make_deps_installs_system_packages_before_the_venvs() -> None:
    plan = run_shell("make -n deps").stdout.splitlines()
    assert plan[0] == "./scripts/install-test-deps.sh", plan[:3]
    script = (REPO_ROOT / "scripts" / "install-test-deps.sh").read_text()
    for package in ("make", "python3.11-venv"):
        assert re.search(rf"^\s.*\b{re.escape(package)}\b", script, re.M), package
    # The warning comes before the services are stopped, and the README says so too.
    assert script.index("NOTE:") < script.index("systemctl stop")
    tests_section = README.split("## Running the tests", 1)[1].split("\n## ", 1)[0]
    assert "stops the system services" in tests_section
    assert re.search(r"about \d+ minutes", tests_section) and re.search(r"\d(\.\d)? GB", tests_section)


def test_drills_dry_run_reports_no_result() -> None:
    command = readme_command(".venv/bin/python -m drills --dry-run")
    result = run_shell(command.replace(".venv/bin/python", sys.executable))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "nothing was run" in result.stdout
    assert not re.search(r"\b(PASS|FAIL|passed)\b", result.stdout), result.stdout


def test_loadtest_against_nothing_says_so_in_one_line() -> None:
    host = f"http://127.0.0.1:{free_port()}"
    result = run_shell(f"make --no-print-directory loadtest HOST={host} SHAPE=smoke")
    assert result.returncode != 0
    tool_lines = [line for line in result.stderr.splitlines() if not line.startswith("make:")]
    assert tool_lines == [
        f"tally-loadtest: {host} does not answer (Connection refused); start the target first "
        "(make run, or docker compose up -d)"
    ], result.stderr
    assert "already up" in README


def test_version_examples_agree() -> None:
    """One build number is one release: every example ``X.Y.Z+build.N`` (or ``-build.N``) names the same X.Y.Z."""
    seen: dict[str, set[str]] = {}
    for path in MARKDOWN:
        for version, build in VERSION_EXAMPLE.findall(path.read_text()):
            seen.setdefault(build, set()).add(version)
    assert seen, "no version examples found"
    assert {build: versions for build, versions in seen.items() if len(versions) > 1} == {}


def test_no_placeholder_where_a_new_user_needs_a_value() -> None:
    for path in MARKDOWN:
        text = path.read_text()
        assert "<repository-url>" not in text, _id(path)
        assert not re.search(r"git clone <", text), _id(path)
