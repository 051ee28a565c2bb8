"""The pre-commit hooks run what CI's lint stage runs, so a commit that passes them passes the lint jobs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

from harness import REPO_ROOT

PRE_COMMIT = REPO_ROOT / ".pre-commit-config.yaml"
# Lint jobs that need only a tool on the developer's machine; compose-schema, dclint and promtool need the
# stack's images or npm and stay CI-only (docs/ci-cd.md).
LOCAL_LINT_JOBS = ("ruff", "mypy", "hadolint", "yamllint", "shellcheck")
SUBCOMMANDS = ("check", "format")
REPORT_OPTIONS = ("--output", "--format")


def hooks() -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(PRE_COMMIT.read_text())
    (repo,) = config["repos"]
    assert repo["repo"] == "local", "hooks use the locked tools make deps installs, not downloaded copies"
    return {hook["id"]: hook for hook in repo["hooks"]}


def ci_commands(job: str) -> list[list[str]]:
    """The tool invocations of a CI job's script: each command's first word and its options."""
    pipeline = yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())
    commands = []
    for line in pipeline[job]["script"]:
        for part in re.split(r"[|;]|&&|<", line):
            words = shlex.split(part, comments=True)
            if words[:1] == ["xargs"]:
                words = words[1:]
            if words and words[0] in LOCAL_LINT_JOBS:
                commands.append(words)
    return commands


def hook_command(hook: dict[str, Any]) -> list[str]:
    words = shlex.split(hook["entry"])
    return [Path(words[0]).name, *words[1:]]


@pytest.mark.parametrize("job", LOCAL_LINT_JOBS)
def test_every_local_lint_job_has_a_hook_with_its_options(job: str) -> None:
    commands = ci_commands(job)
    assert commands, f"CI job {job} no longer runs {job}"
    entries = [hook_command(hook) for hook in hooks().values()]
    for command in commands:
        # Options that only shape CI's report (output format, exit-zero report runs) are not checks.
        if "--exit-zero" in command:
            continue
        flags = {word for word in command[1:] if word.startswith("-") and not word.startswith(REPORT_OPTIONS)}
        subcommand = [word for word in command[1:2] if word in SUBCOMMANDS]
        matching = [
            entry
            for entry in entries
            if entry[0] == command[0] and entry[1 : 1 + len(subcommand)] == subcommand and flags <= set(entry)
        ]
        assert matching, f"no pre-commit hook runs {' '.join(command)} (CI job {job})"


def test_hook_tools_exist_where_make_deps_puts_them() -> None:
    for hook_id, hook in hooks().items():
        tool = shlex.split(hook["entry"])[0]
        if tool.startswith(".venv/"):
            assert (REPO_ROOT / tool).exists(), f"{hook_id}: {tool} missing (make deps)"
