"""scripts/secrets_init.py (the secrets-init job) run natively against temp directories standing in for
./secrets (mounted at /import) and the `secrets` volume: generate, keep, import, rotate, refuse; values are
never printed. Also scripts/init-secrets.sh, which writes ./secrets for operators who pick their own.

When the tests run as root, the job runs as uid 10001 (setpriv), as in compose: root would read files the
real job cannot, and hide exactly the permission problems the job must report."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .stackutil import REPO, render, require_tool, secrets_init_module

INIT_SH = REPO / "scripts" / "init-secrets.sh"
SCRIPT = REPO / "scripts" / "secrets_init.py"
UID = 10001
MODULE = secrets_init_module()
SPEC = {spec.name: spec for spec in MODULE.SPECS}
MINIMUM = {spec.name: spec.minimum for spec in MODULE.SPECS}
GENERATED = {spec.name: spec.generated for spec in MODULE.SPECS}


def _as_job_user(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, UID, UID)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temp directory the job's uid can reach (pytest's own tmp_path sits below a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="tally-secrets-init-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def dirs(shared_tmp: Path) -> tuple[Path, Path]:
    """(import dir as a fresh clone has it, empty volume as the image hands it over)."""
    imports, store = shared_tmp / "import", shared_tmp / "volume"
    imports.mkdir()
    imports.chmod(0o755)
    (imports / "README.md").write_text("committed\n")
    store.mkdir()
    store.chmod(0o700)
    _as_job_user(store)
    return imports, store


def job(imports: Path, store: Path) -> subprocess.CompletedProcess[str]:
    # The system python: the job needs nothing but the standard library, and uid 10001 may not be able to
    # reach the test runner's interpreter (pyenv under /root, a venv in a private home).
    python = sys.executable
    if os.geteuid() == 0:
        python = require_tool(Path("/usr/bin/python3"), "python3", "apt-get install python3")
    cmd = [python, str(SCRIPT), "--import-dir", str(imports), "--store", str(store)]
    if os.geteuid() == 0:
        setpriv = require_tool(shutil.which("setpriv"), "setpriv", "apt-get install util-linux")
        cmd = [setpriv, f"--reuid={UID}", f"--regid={UID}", "--clear-groups", *cmd]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=30, check=False, cwd="/", env={"PATH": os.environ["PATH"]}
    )


def stored(store: Path) -> dict[str, str]:
    """The secrets in the volume (the files derived from them: derived())."""
    return {p.name: p.read_text() for p in store.iterdir() if p.name not in MODULE.DERIVED}


def derived(store: Path) -> dict[str, str]:
    return {name: (store / name).read_text() for name in MODULE.DERIVED}


def assert_no_value_printed(result: subprocess.CompletedProcess[str], *values: str) -> None:
    for value in values:
        assert value not in result.stdout + result.stderr, "a secret value was printed"


def test_the_job_knows_every_secret_of_the_stack() -> None:
    assert MINIMUM == {
        "postgres_password": 16,
        "secret_key": 32,
        "grafana_admin_password": 12,
        "db_app_password": 16,
        "db_backup_password": 16,
        "db_exporter_password": 16,
        "blackbox_password": 16,
    }
    # init-secrets.sh writes the same files, with the same lengths as the job generates.
    script = INIT_SH.read_text()
    for name, length in GENERATED.items():
        assert f"    {name}:{length}\n" in script, f"init-secrets.sh and secrets_init.py disagree on {name}"


def test_fresh_volume_gets_generated_secrets_without_printing_them(dirs: tuple[Path, Path]) -> None:
    imports, store = dirs
    result = job(imports, store)
    assert result.returncode == 0, result.stderr
    values = stored(store)
    assert set(values) == set(GENERATED), "missing secrets or leftover temporary files"
    for name, value in values.items():
        assert len(value) == GENERATED[name] and value.isalnum(), name
        assert stat.S_IMODE((store / name).stat().st_mode) == 0o444, name
        assert (
            f"generated secrets/{name} (stored in volume tally_secrets; copy it out with: docker compose cp "
            f"secrets-init:/srv/secrets-volume/{name} ./secrets/{name})" in result.stdout
        )
    assert len(set(values.values())) == len(values)
    assert_no_value_printed(result, *values.values())
    assert sorted(p.name for p in imports.iterdir()) == ["README.md"], "the import directory was written to"


def test_existing_volume_values_are_kept(dirs: tuple[Path, Path]) -> None:
    imports, store = dirs
    job(imports, store)
    before = stored(store)
    result = job(imports, store)
    assert result.returncode == 0, result.stderr
    assert stored(store) == before
    assert result.stdout.count("kept") == len(before) and "generated" not in result.stdout


def test_operator_files_are_imported_and_rotate_the_volume(dirs: tuple[Path, Path]) -> None:
    imports, store = dirs
    job(imports, store)
    generated = stored(store)
    mine = "OperatorChosenSecretKey" + "7" * 20
    (imports / "secret_key").write_text(mine + "\n")  # echo's newline is not part of the value
    result = job(imports, store)
    assert result.returncode == 0, result.stderr
    after = stored(store)
    assert after["secret_key"] == mine
    assert after["postgres_password"] == generated["postgres_password"]
    assert "rotated   secrets/secret_key from ./secrets/secret_key" in result.stdout
    assert_no_value_printed(result, mine, *generated.values())
    # Unchanged on the next run: kept, not rewritten.
    again = job(imports, store)
    assert "kept      secrets/secret_key (same as ./secrets/secret_key)" in again.stdout
    # A new database password says the database needs ALTER ROLE too.
    (imports / "postgres_password").write_text("p" * 8 + "Q" * 24)
    rotated = job(imports, store)
    assert rotated.returncode == 0 and "ALTER ROLE" in rotated.stdout
    assert stored(store)["postgres_password"] == "p" * 8 + "Q" * 24


def test_operator_files_fill_a_fresh_volume(dirs: tuple[Path, Path]) -> None:
    """Terraform and init-secrets.sh users: every value comes from ./secrets, nothing is generated."""
    imports, store = dirs
    env = {"PATH": os.environ["PATH"], "TALLY_SECRETS_DIR": str(imports)}
    made = subprocess.run(["bash", str(INIT_SH)], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert made.returncode == 0, made.stderr
    result = job(imports, store)
    assert result.returncode == 0, result.stderr
    assert stored(store) == {name: (imports / name).read_text() for name in GENERATED}
    assert result.stdout.count("imported") == len(GENERATED) and "generated" not in result.stdout


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("secret_key", "CHANGE-ME-example-secret-key-0123456789", "holds a placeholder value (contains 'change-me')"),
        ("postgres_password", "changeme-changeme-changeme", "holds a placeholder value (contains 'changeme')"),
        ("grafana_admin_password", "your-password-placeholder", "holds a placeholder value (contains 'placeholder')"),
        ("secret_key", "tooshort-but-real", "is 17 characters, needs at least 32"),
        ("postgres_password", "fifteen-chars-x", "is 15 characters, needs at least 16"),
        ("grafana_admin_password", "   \n", "is empty"),
        ("grafana_admin_password", "", "is empty"),
        ("secret_key", "first-line-of-a-long-secret\nsecond-line-of-it", "spans several lines; a secret is one line"),
    ],
)
def test_unsafe_operator_files_are_refused_with_what_to_do(
    dirs: tuple[Path, Path], name: str, value: str, problem: str
) -> None:
    imports, store = dirs
    job(imports, store)
    before = stored(store)
    (imports / name).write_text(value)
    result = job(imports, store)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"secrets-init: refused: secrets/{name} {problem}; fix: "), lines[0]
    assert "docker compose up -d" in lines[0]
    assert stored(store) == before, "a refused value reached the volume"
    # The other secrets were still looked at (every problem is reported in one run).
    assert result.stdout.count("kept") == len(before) - 1
    if value.strip():
        assert_no_value_printed(result, *value.split("\n"))


def test_unreadable_operator_file_is_an_error_not_a_reason_to_generate(dirs: tuple[Path, Path]) -> None:
    """Terraform writes secrets/ as root 0700. Treating what the job cannot read as "not provided" would
    generate a different database password than the one the existing database has."""
    if os.geteuid() != 0:
        pytest.fail("run as root: the job must run as uid 10001 for this test")
    imports, store = dirs
    (imports / "postgres_password").write_text("r" * 32)
    imports.chmod(0o700)  # owner: root, as Terraform's bootstrap leaves it
    result = job(imports, store)
    assert result.returncode == 1
    assert "secrets/postgres_password is not readable by uid 10001" in result.stderr
    assert "sudo chown 10001 secrets secrets/postgres_password" in result.stderr
    assert "postgres_password" not in stored(store)
    # What init-secrets.sh does as root (and the fix says) is enough.
    os.chown(imports, 10001, 10001)
    os.chown(imports / "postgres_password", 10001, 10001)
    (imports / "postgres_password").chmod(0o600)
    assert job(imports, store).returncode == 0
    assert stored(store)["postgres_password"] == "r" * 32


def test_blackbox_web_config_follows_its_password(dirs: tuple[Path, Path]) -> None:
    """blackbox_web_config (blackbox_exporter's basic auth) is derived: made on a fresh volume and on one from
    before it existed, kept while it matches, remade when the password is rotated or the file is damaged."""
    imports, store = dirs
    first = job(imports, store)
    assert first.returncode == 0, first.stderr
    password = stored(store)["blackbox_password"]
    config = derived(store)["blackbox_web_config"]
    assert MODULE.web_config_admits(config, password) and not MODULE.web_config_admits(config, password + "x")
    assert password not in config and stat.S_IMODE((store / "blackbox_web_config").stat().st_mode) == 0o444
    assert "derived   secrets/blackbox_web_config from secrets/blackbox_password" in first.stdout
    assert_no_value_printed(first, password)
    again = job(imports, store)
    assert derived(store)["blackbox_web_config"] == config and "current   secrets/blackbox_web_config" in again.stdout
    # An install from before: every secret in the volume, no web config. The password is kept.
    (store / "blackbox_web_config").unlink()
    upgraded = job(imports, store)
    assert upgraded.returncode == 0 and "derived   secrets/blackbox_web_config" in upgraded.stdout
    assert stored(store)["blackbox_password"] == password
    assert MODULE.web_config_admits(derived(store)["blackbox_web_config"], password)
    # Rotated by the operator: the new password is admitted, the old one no longer.
    (imports / "blackbox_password").write_text("R" * 32)
    rotated = job(imports, store)
    assert rotated.returncode == 0 and "derived   secrets/blackbox_web_config" in rotated.stdout
    config = derived(store)["blackbox_web_config"]
    assert MODULE.web_config_admits(config, "R" * 32) and not MODULE.web_config_admits(config, password)
    # Damaged by hand: remade.
    (store / "blackbox_web_config").chmod(0o644)
    (store / "blackbox_web_config").write_text("basic_auth_users: {}\n")
    assert "derived   secrets/blackbox_web_config" in job(imports, store).stdout
    assert MODULE.web_config_admits(derived(store)["blackbox_web_config"], "R" * 32)


def test_missing_volume_fails(shared_tmp: Path) -> None:
    result = job(shared_tmp, shared_tmp / "not-mounted")
    assert result.returncode == 2 and "is not mounted" in result.stderr


def test_write_is_atomic_and_replaces_read_only_files(tmp_path: Path) -> None:
    store = tmp_path / "volume"
    store.mkdir()
    target = store / "secret_key"
    target.write_text("old")
    target.chmod(0o444)
    inode = target.stat().st_ino
    (store / ".secret_key.tmp").write_text("leftover of an interrupted run")
    MODULE.write_atomically(target, "new-value")
    assert target.read_text() == "new-value" and target.stat().st_ino != inode  # renamed, not rewritten
    assert stat.S_IMODE(target.stat().st_mode) == 0o444
    assert sorted(p.name for p in store.iterdir()) == ["secret_key"]


# --- scripts/init-secrets.sh --------------------------------------------------------------------------------


def test_shellcheck_clean() -> None:
    shellcheck = require_tool(shutil.which("shellcheck"), "shellcheck", "apt-get install shellcheck")
    result = subprocess.run([shellcheck, str(INIT_SH)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def init_sh(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "TALLY_SECRETS_DIR": str(directory)}
    return subprocess.run(["bash", str(INIT_SH)], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_init_sh_writes_files_the_job_accepts(dirs: tuple[Path, Path]) -> None:
    _, store = dirs
    target = store.parent / "secrets"
    result = init_sh(target)
    assert result.returncode == 0, result.stderr
    # As root (CI deploys, AWS): only the job's uid can enter the directory and read the files.
    assert os.geteuid() == 0, "run as root: init-secrets.sh gives the files to uid 10001 only as root"
    assert stat.S_IMODE(target.stat().st_mode) == 0o700 and target.stat().st_uid == 10001
    values = {}
    for name, length in GENERATED.items():
        value = (target / name).read_text()
        assert len(value) == length and value.isalnum(), name
        assert MODULE.problem(SPEC[name], value) is None
        assert stat.S_IMODE((target / name).stat().st_mode) == 0o600, name
        assert (target / name).stat().st_uid == 10001, name
        values[name] = value
    # ... and the job (uid 10001) accepts them.
    assert job(target, store).returncode == 0
    assert stored(store) == values
    assert_no_value_printed(result, *values.values())
    assert len(set(values.values())) == len(values)
    assert not render().get("secrets"), "the base stack reads secrets from the volume, not compose file secrets"


def test_init_sh_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    init_sh(target)
    before = {p.name: p.read_text() for p in target.iterdir()}
    (target / "secret_key").unlink()
    result = init_sh(target)
    assert result.returncode == 0
    after = {p.name: p.read_text() for p in target.iterdir()}
    assert after["postgres_password"] == before["postgres_password"]
    assert after["grafana_admin_password"] == before["grafana_admin_password"]
    assert after["secret_key"] != before["secret_key"] and len(after["secret_key"]) == 64
    assert "kept" in result.stdout and "1 created" in result.stdout
    assert not [p for p in target.iterdir() if p.name.startswith(".")], "temporary files left behind"
