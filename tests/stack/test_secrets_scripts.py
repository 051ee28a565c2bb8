"""scripts/init-secrets.sh makes usable secrets once; scripts/check-secrets.sh (the secrets-check job)
refuses what would be unsafe, with a message that says what to do."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .stackutil import REPO, render, require_tool

INIT = REPO / "scripts" / "init-secrets.sh"
CHECK = REPO / "scripts" / "check-secrets.sh"
EXPECTED = {"postgres_password": 32, "secret_key": 64, "grafana_admin_password": 24}


def init(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "TALLY_SECRETS_DIR": str(directory)}
    return subprocess.run(["bash", str(INIT)], env=env, capture_output=True, text=True, timeout=30, check=False)


def check(directory: Path) -> subprocess.CompletedProcess[str]:
    # /bin/sh: the app image's shell is dash, as on Debian hosts.
    return subprocess.run(
        ["/bin/sh", str(CHECK), str(directory)], capture_output=True, text=True, timeout=30, check=False
    )


def test_shellcheck_clean() -> None:
    shellcheck = require_tool(shutil.which("shellcheck"), "shellcheck", "apt-get install shellcheck")
    result = subprocess.run([shellcheck, str(INIT), str(CHECK)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_init_creates_every_compose_secret(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    result = init(target)
    assert result.returncode == 0, result.stderr
    assert set(EXPECTED) == set(render()["secrets"]), "init-secrets.sh and compose.yaml disagree"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    values = {}
    for name, length in EXPECTED.items():
        path = target / name
        value = path.read_text()
        assert len(value) == length and value.isalnum(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, name
        assert value not in result.stdout + result.stderr, "a secret value was printed"
        values[name] = value
    assert len(set(values.values())) == 3
    assert check(target).returncode == 0


def test_init_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    init(target)
    before = {p.name: p.read_text() for p in target.iterdir()}
    (target / "secret_key").unlink()
    result = init(target)
    assert result.returncode == 0
    after = {p.name: p.read_text() for p in target.iterdir()}
    assert after["postgres_password"] == before["postgres_password"]
    assert after["grafana_admin_password"] == before["grafana_admin_password"]
    assert after["secret_key"] != before["secret_key"] and len(after["secret_key"]) == 64
    assert "kept" in result.stdout and "1 created" in result.stdout
    assert not [p for p in target.iterdir() if p.name.startswith(".")], "temporary files left behind"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("secret_key", "CHANGE-ME-example-secret-key-0123456789", "placeholder"),
        ("postgres_password", "changeme-changeme-changeme", "placeholder"),
        ("secret_key", "tooshort", "needs at least 32"),
        ("grafana_admin_password", "   \n", "empty"),
        ("postgres_password", None, "missing"),
    ],
)
def test_check_refuses_unsafe_secrets_and_says_what_to_do(
    tmp_path: Path, name: str, value: str | None, problem: str
) -> None:
    target = tmp_path / "secrets"
    init(target)
    if value is None:
        (target / name).unlink()
    else:
        (target / name).write_text(value)
    result = check(target)
    assert result.returncode == 1
    assert f"secrets/{name}" in result.stderr and problem in result.stderr
    assert "./scripts/init-secrets.sh" in result.stderr
    assert value is None or not value.strip() or value not in result.stderr + result.stdout
