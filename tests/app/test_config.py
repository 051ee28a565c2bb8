from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.config import DEV_SECRET_KEY, SETTINGS, ConfigError, load_config, load_config_or_exit
from harness import REPO_ROOT
from harness.gunicorn import GUNICORN, TEST_SECRET_KEY, base_env, run_gunicorn

PG = "postgresql://tally@db.internal:5432/tally"
VALID = {"TALLY_ENV": "production", "DATABASE_URL": PG, "SECRET_KEY": TEST_SECRET_KEY}


def test_production_defaults() -> None:
    config = load_config(VALID)
    assert config.database_url.drivername == "postgresql+psycopg2"
    assert config.user_name == "n/a"
    assert config.user_url == "#"
    assert config.trusted_proxy_hops == 0
    assert config.sentry_dsn is None
    assert config.is_postgres


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def test_the_loader_reads_exactly_the_declared_settings() -> None:
    """SETTINGS is what the README table, .env.example and compose are checked against (tests/docs,
    tests/stack), so a variable read but not declared, or declared but never read, would slip past them.
    PostgreSQL, so that the branch reading DATABASE_PASSWORD runs too; development, so that the missing
    secrets are not an error."""
    environ = _RecordingEnviron({"TALLY_ENV": "development", "DATABASE_URL": "postgresql://tally@db:5432/tally"})
    load_config(environ)
    assert environ.read == {variable for setting in SETTINGS for variable in setting.variables}


def test_settings_declare_what_their_type_needs() -> None:
    for setting in SETTINGS:
        assert (setting.bounds is not None) == (setting.type is not str), setting.name
        if setting.shown_default is not None and setting.default is not None:
            assert f"`{setting.default}`" in setting.shown_default, setting.name


@pytest.mark.parametrize(
    ("overrides", "bind"),
    [
        ({}, "127.0.0.1:8000"),
        ({"TALLY_ENV": "development", "DATABASE_URL": ""}, "127.0.0.1:8000"),
        ({"BIND_ADDRESS": "0.0.0.0", "PORT": "9000"}, "0.0.0.0:9000"),
        ({"BIND_ADDRESS": "::1"}, "[::1]:8000"),
    ],
)
def test_server_binds_loopback_unless_asked(overrides: dict[str, str], bind: str) -> None:
    environ = {key: value for key, value in (VALID | overrides).items() if value != ""}
    assert load_config(environ).bind == bind


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(str(ipaddress.ip_address(words)))
    return found


def test_gunicorn_listens_on_loopback_only_by_default(tmp_path: Path) -> None:
    env = base_env(f"sqlite:///{tmp_path / 'tally.sqlite3'}", tmp_path)
    env.pop("BIND_ADDRESS", None)
    server = run_gunicorn(env, tmp_path / "gunicorn.log")
    try:
        assert _listening_addresses(server.port) == {"127.0.0.1"}
        assert _listening_addresses(server.metrics_port) == {"127.0.0.1"}
    finally:
        server.stop()


def test_heroku_style_url_is_normalised() -> None:
    config = load_config(VALID | {"DATABASE_URL": "postgres://u:p@h:5433/d"})
    assert config.database_url.drivername == "postgresql+psycopg2"
    assert config.database_url.port == 5433
    assert config.database_url.password == "p"


def test_secrets_come_from_files(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(TEST_SECRET_KEY + "\n")
    (tmp_path / "pw").write_text("s3cret\n")
    config = load_config(
        {"DATABASE_URL": PG, "SECRET_KEY_FILE": str(tmp_path / "key"), "DATABASE_PASSWORD_FILE": str(tmp_path / "pw")}
    )
    assert config.secret_key == TEST_SECRET_KEY.encode()
    assert config.database_url.password == "s3cret"


def test_development_runs_on_sqlite_without_settings() -> None:
    config = load_config({"TALLY_ENV": "development"})
    assert config.database_is_default
    assert config.database_url.get_backend_name() == "sqlite"
    assert config.secret_key == DEV_SECRET_KEY.encode()


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"TALLY_ENV": "staging"}, "TALLY_ENV"),
        ({"DATABASE_URL": ""}, "DATABASE_URL"),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL"),
        ({"DATABASE_URL": "mysql://u@h/d"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql:///nohost"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u:p@h/d", "DATABASE_PASSWORD": "x"}, "DATABASE_PASSWORD"),
        ({"SECRET_KEY": ""}, "SECRET_KEY"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY"),
        ({"SECRET_KEY": "change-me-change-me-change-me-change-me"}, "SECRET_KEY"),
        ({"SECRET_KEY_FILE": "/nonexistent/secret"}, "SECRET_KEY"),
        ({"TRUSTED_PROXY_HOPS": "one"}, "TRUSTED_PROXY_HOPS"),
        ({"TRUSTED_PROXY_HOPS": "-1"}, "TRUSTED_PROXY_HOPS"),
        ({"TRUSTED_PROXY_HOPS": "9"}, "TRUSTED_PROXY_HOPS"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"USER_URL": "javascript:alert(1)"}, "USER_URL"),
        ({"USER_NAME": "x" * 101}, "USER_NAME"),
        ({"DB_POOL_SIZE": "0"}, "DB_POOL_SIZE"),
        ({"DB_POOL_TIMEOUT": "soon"}, "DB_POOL_TIMEOUT"),
        ({"SENTRY_TRACES_SAMPLE_RATE": "2"}, "SENTRY_TRACES_SAMPLE_RATE"),
        ({"BUILD_NUMBER": "12a"}, "BUILD_NUMBER"),
        ({"GIT_COMMIT": "zzz"}, "GIT_COMMIT"),
        ({"PORT": "70000"}, "PORT"),
        ({"BIND_ADDRESS": "localhost"}, "BIND_ADDRESS"),
        ({"BIND_ADDRESS": "0.0.0.0:8000"}, "BIND_ADDRESS"),
        ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
    ],
)
def test_invalid_values_name_the_variable(overrides: dict[str, str], variable: str) -> None:
    environ = {key: value for key, value in (VALID | overrides).items() if value != ""}
    if variable == "SECRET_KEY" and overrides.get("SECRET_KEY") == "":
        environ.pop("SECRET_KEY", None)
    if "SECRET_KEY_FILE" in overrides:
        environ.pop("SECRET_KEY")
    with pytest.raises(ConfigError) as error:
        load_config(environ)
    assert str(error.value).startswith(variable)
    assert "\n" not in str(error.value)


def test_secret_and_secret_file_together_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text(TEST_SECRET_KEY)
    with pytest.raises(ConfigError, match="SECRET_KEY: set either"):
        load_config(VALID | {"SECRET_KEY_FILE": str(tmp_path / "key")})


def test_empty_secret_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n")
    with pytest.raises(ConfigError, match="SECRET_KEY_FILE: .* is empty"):
        load_config({"DATABASE_URL": PG, "SECRET_KEY_FILE": str(tmp_path / "key")})


def test_entry_points_exit_with_one_line() -> None:
    with pytest.raises(SystemExit) as stop:
        load_config_or_exit({"DATABASE_URL": PG, "SECRET_KEY": "short"})
    assert str(stop.value) == "tally: invalid configuration: SECRET_KEY: must be at least 32 characters, got 5"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SECRET_KEY": "short"}, "tally: invalid configuration: SECRET_KEY: must be at least 32 characters, got 5"),
        ({"TRUSTED_PROXY_HOPS": "x"}, "tally: invalid configuration: TRUSTED_PROXY_HOPS: expected a whole number"),
    ],
)
def test_gunicorn_refuses_bad_config_at_start(env: dict[str, str], expected: str) -> None:
    result = subprocess.run(
        [str(GUNICORN), "--config", "gunicorn.conf.py", "app:create_app()"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", **VALID, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(expected)
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_flask_cli_refuses_bad_config() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "app", "db", "upgrade"],
        cwd=REPO_ROOT,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": PG},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "tally: invalid configuration: SECRET_KEY: required in production" in result.stderr
    assert "Traceback" not in result.stderr
