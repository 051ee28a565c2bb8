"""Configuration: read from the environment once, validated, into one typed object.

A bad value raises ``ConfigError`` naming the variable; ``create_app`` and
``gunicorn.conf.py`` turn it into one readable line and a non-zero exit, so an
operator never meets a traceback at the first request.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .roles import PASSWORD_VARIABLES

ENVIRONMENTS = ("production", "development")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_SECRET_KEY_LENGTH = 32
# Values an operator may have copied from an example file without replacing them.
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "example", "placeholder")
DEV_SECRET_KEY = "development-only-insecure-secret-key-do-not-deploy"  # noqa: S105 - refused in production
DEV_DATABASE_PATH = Path("instance") / "tally-dev.sqlite3"
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class ConfigError(ValueError):
    """One invalid environment variable; ``str()`` is the line shown to the operator."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Setting:
    """One environment variable the app reads, declared once.

    The loader takes defaults and bounds from here (reading an undeclared name is a ``KeyError``); the
    README's configuration table must equal the rows rendered from these (tests/docs), and compose's
    fallbacks and ``.env.example`` are checked against them (tests/stack).
    """

    name: str
    type: type[str | int | float]
    # As an operator would write it in the environment, parsed by the same code as a value that is set;
    # None: unset, and the loader decides (documented by ``shown_default``).
    default: str | None
    doc: str  # the README table's "Meaning"
    bounds: tuple[float, float] | None = None
    choices: tuple[str, ...] = ()
    secret: bool = False  # also read from the file named by NAME_FILE (Docker secrets)
    shown_default: str | None = None  # the README table's "Default" where the plain default says too little

    @property
    def variables(self) -> tuple[str, ...]:
        return (self.name, f"{self.name}_FILE") if self.secret else (self.name,)

    @property
    def readme_default(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        return "—" if self.default is None else f"`{self.default}`"


# In the README table's order.
SETTINGS = (
    Setting(
        "DATABASE_URL",
        str,
        None,
        "SQLAlchemy URL; `postgres://` accepted. Required when `TALLY_ENV=production`. A managed server: add"
        " `?sslmode=verify-full&sslrootcert=<CA file>` (checked at start: a libpq sslmode, a readable file).",
        secret=True,
        shown_default="SQLite file (development only)",
    ),
    Setting(
        "DATABASE_PASSWORD",
        str,
        None,
        "Password put into `DATABASE_URL` when the URL has none (compose: from the secret file).",
        secret=True,
    ),
    Setting(
        "SECRET_KEY",
        str,
        None,
        "Key of the visitor HMAC, at least 32 characters. Changing it makes every visitor new.",
        secret=True,
        shown_default="— (required in production)",
    ),
    Setting(
        "TALLY_ENV",
        str,
        "production",
        "`production` or `development` (development allows SQLite and a built-in key).",
        choices=ENVIRONMENTS,
    ),
    Setting("USER_NAME", str, "n/a", 'Shown as "Deployed by …" in the footer.'),
    Setting("USER_URL", str, "#", "Link of that name; must be `http(s)://…` or `#`."),
    Setting(
        "TRUSTED_PROXY_HOPS",
        int,
        "0",
        "Proxies in front of the app whose `X-Forwarded-For` is trusted (compose: `1`, Traefik).",
        bounds=(0, 5),
    ),
    Setting(
        "TRUSTED_PROXY_CIDRS",
        str,
        None,
        "Comma-separated networks the proxy connects from. When set, the app serves only them and loopback (the"
        " container's own health check; its `X-Forwarded-*` headers are dropped): any other peer gets 403 and"
        " nothing is counted (compose: the `app` network's subnet, `APP_NETWORK_SUBNET`, default"
        " `172.16.240.0/24`).",
        shown_default="— (every peer)",
    ),
    Setting(
        "LOG_LEVEL",
        str,
        "INFO",
        "`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`. Logs are JSON lines on stdout.",
        choices=LOG_LEVELS,
    ),
    Setting("SENTRY_DSN", str, None, "Sends unhandled errors to Sentry; nothing is sent without it.", secret=True),
    Setting("SENTRY_ENVIRONMENT", str, None, "Sentry environment tag.", shown_default="value of `TALLY_ENV`"),
    Setting("SENTRY_TRACES_SAMPLE_RATE", float, "0", "Fraction of requests traced, 0–1.", bounds=(0.0, 1.0)),
    Setting("DB_POOL_SIZE", int, "4", "Connections kept per gunicorn worker.", bounds=(1, 100)),
    Setting("DB_MAX_OVERFLOW", int, "2", "Extra connections per worker under bursts.", bounds=(0, 100)),
    Setting(
        "DB_POOL_TIMEOUT",
        float,
        "3",
        "Seconds to wait for a pooled connection before answering 503.",
        bounds=(0.1, 60.0),
    ),
    Setting("DB_CONNECT_TIMEOUT", int, "2", "Seconds to wait for PostgreSQL to accept a connection.", bounds=(1, 60)),
    Setting("DB_STATEMENT_TIMEOUT_MS", int, "5000", "Statement and lock timeout in PostgreSQL.", bounds=(100, 600_000)),
    Setting(
        "DB_APP_PASSWORD",
        str,
        None,
        "Migration job only (compose: from the secret file `db_app_password`): with all three role passwords"
        " set, `flask db upgrade` creates or updates the roles `tally_app`, `tally_backup`, `tally_exporter`"
        " with them, migrates as the schema owner `tally_owner` and grants the app its tables"
        ' ([docs/security.md](docs/security.md), "Database roles").',
        secret=True,
    ),
    Setting(
        "DB_BACKUP_PASSWORD",
        str,
        None,
        "Migration job only (secret file `db_backup_password`): password of `tally_backup`, the backup sidecar's role.",
        secret=True,
    ),
    Setting(
        "DB_EXPORTER_PASSWORD",
        str,
        None,
        "Migration job only (secret file `db_exporter_password`): password of `tally_exporter`, the"
        " postgres-exporter's role.",
        secret=True,
    ),
    Setting(
        "MIGRATION_LOCK_TIMEOUT_MS",
        int,
        "2000",
        "Migration job: how long a schema change waits for a table lock before it rolls back and retries.",
        bounds=(10, 600_000),
    ),
    Setting(
        "MIGRATION_LOCK_ATTEMPTS",
        int,
        "10",
        "Migration job: tries before it gives up (exit 1, nothing changed).",
        bounds=(1, 1000),
    ),
    Setting(
        "BUILD_NUMBER",
        str,
        None,
        "Build number baked into the image; the version reads `<version.txt>+build.N`, e.g. `1.3.0+build.57`.",
    ),
    Setting("GIT_COMMIT", str, None, "Commit baked into the image, shown by `/version`."),
    Setting(
        "BIND_ADDRESS",
        str,
        "127.0.0.1",
        "IP address gunicorn and the metrics port listen on: loopback unless asked, so `make run` is not on"
        " the network; the image listens on every interface of its container, where Docker's networks decide"
        " who reaches it.",
        shown_default="`127.0.0.1` (image: `0.0.0.0`)",
    ),
    Setting("PORT", int, "8000", "HTTP port of gunicorn.", bounds=(1, 65535)),
    Setting("METRICS_PORT", int, "9200", "Prometheus metrics port (never routed by Traefik).", bounds=(1, 65535)),
    Setting(
        "METRICS_ALLOWED_CIDRS",
        str,
        None,
        "Comma-separated networks Prometheus scrapes from. When set, the metrics port serves only them and"
        " loopback: any other peer gets 403 (compose: the `app-metrics` network's subnet, `APP_METRICS_SUBNET`,"
        " default `172.16.242.0/24`).",
        shown_default="— (every peer)",
    ),
    Setting("WEB_CONCURRENCY", int, "2", "gunicorn worker processes per replica.", bounds=(1, 64)),
    Setting("GUNICORN_THREADS", int, "4", "Threads per worker.", bounds=(1, 64)),
    Setting(
        "GUNICORN_TIMEOUT",
        int,
        "30",
        "Seconds before a worker with a stuck request (or a stuck main loop) is replaced by a fresh one"
        " (`app/watchdog.py`).",
        bounds=(1, 600),
    ),
    Setting(
        "GUNICORN_GRACEFUL_TIMEOUT",
        int,
        "20",
        "Seconds to finish in-flight requests on SIGTERM (below compose's 30 s grace).",
        bounds=(1, 600),
    ),
    Setting(
        "SHUTDOWN_DELAY",
        int,
        "5",
        "Seconds a replica keeps serving after SIGTERM, `/readyz` answering 503 `draining`, before gunicorn"
        " stops, so Traefik takes it out first when nothing drained it (a Swarm rolling update, `docker"
        " compose stop`); a second SIGTERM stops at once. Adds to `GUNICORN_GRACEFUL_TIMEOUT` within"
        " compose's 30 s grace (`app/shutdown.py`).",
        bounds=(0, 60),
    ),
    Setting("PROMETHEUS_MULTIPROC_DIR", str, None, "Where workers share metrics; set in the image to a tmpfs path."),
    Setting(
        "DRAIN_MARKER",
        str,
        None,
        "While this file exists `/readyz` answers 503 `draining` and everything else is served:"
        " `scripts/deploy.sh` creates it (`python -m app.drain`) so Traefik takes a replica out of rotation"
        " before it is stopped.",
        shown_default="— (image: `/tmp/tally-draining`)",
    ),
)
SETTINGS_BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Config:
    environment: str
    database_url: URL
    database_is_default: bool
    secret_key: bytes
    user_name: str
    user_url: str
    trusted_proxy_hops: int
    # Peers whose X-Forwarded-* headers count; empty: every peer (only safe when nothing but the proxy
    # can reach the app's port).
    trusted_proxy_networks: tuple[IPv4Network | IPv6Network, ...]
    metrics_allowed_networks: tuple[IPv4Network | IPv6Network, ...]
    log_level: str
    sentry_dsn: str | None
    sentry_environment: str
    sentry_traces_sample_rate: float
    db_pool_size: int
    db_max_overflow: int
    db_pool_timeout: float
    db_connect_timeout: int
    db_statement_timeout_ms: int
    build_number: str | None
    git_commit: str | None
    bind_address: str
    port: int
    metrics_port: int
    web_concurrency: int
    gunicorn_threads: int
    gunicorn_timeout: int
    gunicorn_graceful_timeout: int
    shutdown_delay: int
    prometheus_multiproc_dir: str | None
    # While this file exists /readyz answers 503 "draining": Traefik takes the replica out of rotation and
    # it still serves what it was sent (scripts/deploy.sh creates it before stopping a replica, app/drain.py).
    drain_marker: Path | None
    # Passwords of the least-privilege roles by variable name (app.roles); only the migration job has them.
    db_role_passwords: Mapping[str, str]
    migration_lock_timeout_ms: int
    migration_lock_attempts: int

    @property
    def is_postgres(self) -> bool:
        return self.database_url.get_backend_name() == "postgresql"

    @property
    def bind(self) -> str:
        """gunicorn's ``bind`` value: an IPv6 address needs brackets before the port."""
        host = f"[{self.bind_address}]" if ":" in self.bind_address else self.bind_address
        return f"{host}:{self.port}"


class _Environment:
    """Typed accessors over the process environment (or a mapping in tests), by declared setting."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        return None if value is None or value.strip() == "" else value.strip()

    def text(self, name: str) -> str | None:
        """The value, else the declared default (None when there is none)."""
        raw = self._raw(name)
        return SETTINGS_BY_NAME[name].default if raw is None else raw

    def required(self, name: str) -> str:
        """The value, else the declared default: for settings that have one."""
        value = self.text(name)
        assert value is not None, f"{name} is declared without a default"
        return value

    def secret(self, name: str) -> str | None:
        """A secret from NAME or from the file named by NAME_FILE (Docker secrets)."""
        assert SETTINGS_BY_NAME[name].secret, f"{name} is not declared secret"
        direct = self.text(name)
        file_name = self._raw(f"{name}_FILE")
        if direct is not None and file_name is not None:
            raise ConfigError(name, f"set either {name} or {name}_FILE, not both")
        if file_name is None:
            return direct
        try:
            content = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE", f"cannot read {file_name}: {exc.strerror}") from None
        if not content:
            raise ConfigError(f"{name}_FILE", f"{file_name} is empty")
        return content

    def _bounded(self, name: str, expected: str) -> float:
        setting = SETTINGS_BY_NAME[name]
        assert setting.bounds is not None, f"{name} is declared without bounds"
        raw = self.required(name)
        try:
            value = int(raw) if setting.type is int else float(raw)
        except ValueError:
            raise ConfigError(name, f"expected {expected}, got {raw!r}") from None
        minimum, maximum = setting.bounds
        if not minimum <= value <= maximum:
            raise ConfigError(name, f"must be between {minimum} and {maximum}, got {value}")
        return value

    def integer(self, name: str) -> int:
        assert SETTINGS_BY_NAME[name].type is int, f"{name} is not declared int"
        return int(self._bounded(name, "a whole number"))

    def number(self, name: str) -> float:
        assert SETTINGS_BY_NAME[name].type is float, f"{name} is not declared float"
        return self._bounded(name, "a number")

    def choice(self, name: str, *, upper: bool = False) -> str:
        raw = self.required(name)
        value = raw.upper() if upper else raw.lower()
        choices = SETTINGS_BY_NAME[name].choices
        if value not in choices:
            raise ConfigError(name, f"must be one of {', '.join(choices)}, got {raw!r}")
        return value


def _database_url(env: _Environment, environment: str) -> tuple[URL, bool]:
    raw = env.secret("DATABASE_URL")
    if raw is None:
        if environment == "production":
            raise ConfigError(
                "DATABASE_URL", "required when TALLY_ENV=production (or set TALLY_ENV=development for SQLite)"
            )
        return make_url(f"sqlite:///{DEV_DATABASE_PATH.resolve()}"), True
    if raw.startswith("postgres://"):
        # Heroku-style URLs; SQLAlchemy 1.4+ only knows the "postgresql" name.
        raw = "postgresql://" + raw.removeprefix("postgres://")
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigError(
            "DATABASE_URL", "not a valid database URL (expected postgresql://user@host:5432/db)"
        ) from None
    backend = url.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise ConfigError("DATABASE_URL", f"unsupported database {backend!r}; use postgresql or sqlite")
    if backend == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg2")
        if not url.host or not url.database:
            raise ConfigError("DATABASE_URL", "needs a host and a database name")
        _check_tls(url)
        password = env.secret("DATABASE_PASSWORD")
        if password is not None:
            if url.password:
                raise ConfigError("DATABASE_PASSWORD", "the DATABASE_URL already carries a password")
            url = url.set(password=password)
    return url, False


def _query_value(url: URL, key: str) -> str | None:
    value = url.query.get(key)
    return value[-1] if isinstance(value, tuple) else value


def _check_tls(url: URL) -> None:
    # libpq would say so only at the first connection, and every replica would then answer 503 for ever.
    mode = _query_value(url, "sslmode")
    if mode is not None and mode not in SSL_MODES:
        raise ConfigError("DATABASE_URL", f"sslmode must be one of {', '.join(SSL_MODES)}, got {mode!r}")
    root = _query_value(url, "sslrootcert")
    if root is not None and root != "system":  # "system": the OS trust store (libpq 16+)
        try:
            Path(root).read_bytes()
        except OSError as exc:
            raise ConfigError("DATABASE_URL", f"sslrootcert {root} cannot be read: {exc.strerror}") from None


def _secret_key(env: _Environment, environment: str) -> bytes:
    key = env.secret("SECRET_KEY")
    if key is None:
        if environment == "production":
            raise ConfigError(
                "SECRET_KEY",
                "required in production; run scripts/init-secrets.sh or point SECRET_KEY_FILE at 32+ random characters",
            )
        return DEV_SECRET_KEY.encode()
    if len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigError("SECRET_KEY", f"must be at least {MIN_SECRET_KEY_LENGTH} characters, got {len(key)}")
    if environment == "production" and any(marker in key.lower() for marker in PLACEHOLDER_MARKERS):
        raise ConfigError(
            "SECRET_KEY", "still holds an example placeholder; generate a real secret (scripts/init-secrets.sh)"
        )
    return key.encode()


def _user_url(env: _Environment) -> str:
    url = env.required("USER_URL")
    # The value lands in an href: anything but http(s) could run script in the visitor's browser.
    if url != "#" and urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError("USER_URL", f"must be an http(s) URL or '#', got {url!r}")
    return url


def _bind_address(env: _Environment) -> str:
    # Loopback unless asked: a development server is not for the network. The image sets 0.0.0.0, where
    # the container's own network namespace and Docker's port publishing decide who can reach it.
    raw = env.required("BIND_ADDRESS")
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        raise ConfigError(
            "BIND_ADDRESS", f"must be an IP address such as 127.0.0.1 or 0.0.0.0 (every interface), got {raw!r}"
        ) from None


def _optional_token(env: _Environment, name: str, allowed: str) -> str | None:
    value = env.text(name)
    if value is not None and (len(value) > 64 or any(ch not in allowed for ch in value)):
        raise ConfigError(name, f"must be at most 64 characters of [{allowed[:12]}...], got {value!r}")
    return value


def _role_passwords(env: _Environment, database_url: URL) -> dict[str, str]:
    passwords = {name: env.secret(name) for name in PASSWORD_VARIABLES}
    given = {name: value for name, value in passwords.items() if value is not None}
    if not given:
        return {}
    missing = [name for name in PASSWORD_VARIABLES if name not in given]
    if missing:
        raise ConfigError(missing[0], f"set all of {', '.join(PASSWORD_VARIABLES)} (or their _FILE) or none")
    if database_url.get_backend_name() != "postgresql":
        raise ConfigError(PASSWORD_VARIABLES[0], "database roles exist only on PostgreSQL")
    return given


def _networks(name: str, raw: str | None) -> tuple[IPv4Network | IPv6Network, ...]:
    networks = []
    for item in (part.strip() for part in (raw or "").split(",")):
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(name, f"{item!r} is not an IP network (e.g. 172.31.240.0/24)") from None
    return tuple(networks)


def _optional_path(raw: str | None) -> Path | None:
    return None if raw is None else Path(raw)


_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"


def load_config(environ: Mapping[str, str] | None = None) -> Config:
    env = _Environment(os.environ if environ is None else environ)
    environment = env.choice("TALLY_ENV")
    database_url, database_is_default = _database_url(env, environment)
    user_name = env.required("USER_NAME")
    if len(user_name) > 100:
        raise ConfigError("USER_NAME", "must be at most 100 characters")
    return Config(
        environment=environment,
        database_url=database_url,
        database_is_default=database_is_default,
        secret_key=_secret_key(env, environment),
        user_name=user_name,
        user_url=_user_url(env),
        trusted_proxy_hops=env.integer("TRUSTED_PROXY_HOPS"),
        trusted_proxy_networks=_networks("TRUSTED_PROXY_CIDRS", env.text("TRUSTED_PROXY_CIDRS")),
        metrics_allowed_networks=_networks("METRICS_ALLOWED_CIDRS", env.text("METRICS_ALLOWED_CIDRS")),
        log_level=env.choice("LOG_LEVEL", upper=True),
        sentry_dsn=env.secret("SENTRY_DSN"),
        sentry_environment=env.text("SENTRY_ENVIRONMENT") or environment,
        sentry_traces_sample_rate=env.number("SENTRY_TRACES_SAMPLE_RATE"),
        db_pool_size=env.integer("DB_POOL_SIZE"),
        db_max_overflow=env.integer("DB_MAX_OVERFLOW"),
        db_pool_timeout=env.number("DB_POOL_TIMEOUT"),
        db_connect_timeout=env.integer("DB_CONNECT_TIMEOUT"),
        db_statement_timeout_ms=env.integer("DB_STATEMENT_TIMEOUT_MS"),
        build_number=_optional_token(env, "BUILD_NUMBER", _DIGITS),
        git_commit=_optional_token(env, "GIT_COMMIT", _HEX),
        bind_address=_bind_address(env),
        port=env.integer("PORT"),
        metrics_port=env.integer("METRICS_PORT"),
        web_concurrency=env.integer("WEB_CONCURRENCY"),
        gunicorn_threads=env.integer("GUNICORN_THREADS"),
        gunicorn_timeout=env.integer("GUNICORN_TIMEOUT"),
        gunicorn_graceful_timeout=env.integer("GUNICORN_GRACEFUL_TIMEOUT"),
        shutdown_delay=env.integer("SHUTDOWN_DELAY"),
        prometheus_multiproc_dir=env.text("PROMETHEUS_MULTIPROC_DIR"),
        drain_marker=_optional_path(env.text("DRAIN_MARKER")),
        db_role_passwords=_role_passwords(env, database_url),
        migration_lock_timeout_ms=env.integer("MIGRATION_LOCK_TIMEOUT_MS"),
        migration_lock_attempts=env.integer("MIGRATION_LOCK_ATTEMPTS"),
    )


def load_config_or_exit(environ: Mapping[str, str] | None = None) -> Config:
    """For process entry points: one readable line on stderr and exit status 2."""
    try:
        return load_config(environ)
    except ConfigError as exc:
        raise SystemExit(f"tally: invalid configuration: {exc}") from None
