"""The `secrets-init` job: fills the `secrets` volume that every service reads its secret files from.

For each secret the stack needs:
  * ./secrets/<name> exists (mounted at IMPORT_DIR)  -> validate it and copy it into the volume, so an
    operator's own value (scripts/init-secrets.sh, Terraform) wins and editing the file rotates it;
  * else the volume already holds it                 -> keep it (restarts never change a secret);
  * else                                             -> generate a random value.
Then the files derived from a secret: blackbox_web_config (blackbox_exporter's --web.config.file, a bcrypt
hash of blackbox_password for the user `prometheus`) is rewritten whenever it is missing or no longer
matches the password, so an existing install gets it and a rotated password updates it.
A value is never printed. Files are written atomically (temp file + rename) and made 0444: the volume's
directory belongs to this job's user, and each service mounts only its own files (volume subpath).

Runs as a non-root user with a read-only root filesystem; only the volume is writable. Python standard
library only (it runs in the app image, which has no shell tools worth relying on).

    python secrets_init.py [--import-dir DIR] [--store DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import string
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

with warnings.catch_warnings():
    # Deprecated since 3.11 and gone in 3.13; the image pins 3.11 (Dockerfile), whose libcrypt does bcrypt,
    # so no dependency is added for one hash. A Python 3.13 image needs a pinned `bcrypt` wheel instead.
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt


@dataclass(frozen=True)
class Spec:
    name: str
    minimum: int  # refuse an imported value shorter than this
    generated: int  # length of a generated value (matches scripts/init-secrets.sh)


# Every secret file of the stack. secret_key >= 32 is the app's own rule; the others are comfortably above
# brute force. Keep in sync with scripts/init-secrets.sh (tests/stack checks both against compose).
SPECS = (
    Spec("postgres_password", 16, 32),
    Spec("secret_key", 32, 64),
    Spec("grafana_admin_password", 12, 24),
    # The least-privilege database roles (app/roles.py); the migration job sets them on every run.
    Spec("db_app_password", 16, 32),
    Spec("db_backup_password", 16, 32),
    Spec("db_exporter_password", 16, 32),
    # Prometheus's basic-auth password at blackbox_exporter (the only user of /probe).
    Spec("blackbox_password", 16, 32),
)

# blackbox_exporter's web config: derived from blackbox_password, never imported or edited by hand.
WEB_CONFIG = "blackbox_web_config"
WEB_CONFIG_SOURCE = "blackbox_password"
WEB_CONFIG_USER = "prometheus"
DERIVED = (WEB_CONFIG,)
# 2^10 rounds: the password is 32 random characters, so the cost guards nothing; a cheap hash keeps each
# check (the exporter verifies every request it has not cached) and this job under its CPU limit fast.
BCRYPT_ROUNDS = 1 << 10
BCRYPT_HASH = re.compile(r"^  " + WEB_CONFIG_USER + r" *: *'(\$2[aby]\$\d\d\$[./A-Za-z0-9]{53})'$", re.MULTILINE)

# Values people leave in place from examples. Case-insensitive substring match.
PLACEHOLDERS = ("change-me", "changeme", "change_me", "example", "placeholder")

# Alphanumerics only: no quoting or URL-escaping surprises wherever a consumer puts the value.
ALPHABET = string.ascii_letters + string.digits

VOLUME = "tally_secrets"
STORE_IN_CONTAINER = "/srv/secrets-volume"


class Refused(Exception):
    """A secret this job will not install; the message is the one line the operator reads."""


def problem(spec: Spec, value: str) -> str | None:
    if not value.strip():
        return "is empty"
    if "\n" in value or "\r" in value:
        return "spans several lines; a secret is one line"
    if len(value) < spec.minimum:
        return f"is {len(value)} characters, needs at least {spec.minimum}"
    lower = value.lower()
    for marker in PLACEHOLDERS:
        if marker in lower:
            return f"holds a placeholder value (contains '{marker}')"
    return None


def read_import(spec: Spec, import_dir: Path) -> str | None:
    """The operator's value, or None when they provided none. Unreadable is an error, never "absent":
    silently generating a different value would lock the app out of an existing database."""
    path = import_dir / spec.name
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        raise Refused(
            f"secrets/{spec.name} is not readable by uid {os.getuid()} (this job's user); "
            f"fix: sudo chown {os.getuid()} secrets secrets/{spec.name} && sudo chmod 0700 secrets && sudo chmod "
            f"0600 secrets/{spec.name} (or delete the file to keep or generate the value in the volume), then "
            "docker compose up -d"
        ) from None
    except IsADirectoryError:
        raise Refused(
            f"secrets/{spec.name} is a directory; fix: remove it (a file holding the value, or nothing to have "
            "one generated), then docker compose up -d"
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(f"secrets/{spec.name} is not UTF-8 text; fix: write the value as plain text") from None
    # Editors and `echo` add a final newline; every consumer strips it, so it is not part of the value.
    value = text.rstrip("\r\n")
    issue = problem(spec, value)
    if issue:
        raise Refused(
            f"secrets/{spec.name} {issue}; fix: write a real value into it, or delete it (the volume's value "
            "is kept, or a random one generated), then docker compose up -d"
        )
    return value


def read_store(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_atomically(path: Path, value: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    # O_EXCL after removing a leftover of an interrupted run: never write through a planted symlink.
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, value.encode("utf-8"))
        os.fchmod(fd, 0o444)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def generate(length: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def ensure(spec: Spec, import_dir: Path, store: Path) -> str:
    """Install one secret; returns the line to print (never the value)."""
    target = store / spec.name
    imported = read_import(spec, import_dir)
    current = read_store(target)
    if imported is not None:
        if imported == current:
            return f"kept      secrets/{spec.name} (same as ./secrets/{spec.name})"
        write_atomically(target, imported)
        if current is None:
            return f"imported  secrets/{spec.name} from ./secrets/{spec.name}"
        note = ""
        if spec.name == "postgres_password":
            note = (
                "; an existing database keeps its old password until you run ALTER ROLE "
                "(docs/stack.md, 'Rotating secrets')"
            )
        return (
            f"rotated   secrets/{spec.name} from ./secrets/{spec.name}; running services see it once "
            f"recreated: docker compose up -d --force-recreate{note}"
        )
    if current is not None:
        if problem(spec, current):
            # Cannot come from this job; someone edited the volume by hand.
            raise Refused(
                f"secrets/{spec.name} in volume {VOLUME} is unusable ({problem(spec, current)}); fix: put a real "
                f"value in ./secrets/{spec.name}, then docker compose up -d"
            )
        return f"kept      secrets/{spec.name} (volume {VOLUME})"
    write_atomically(target, generate(spec.generated))
    return (
        f"generated secrets/{spec.name} (stored in volume {VOLUME}; copy it out with: docker compose cp "
        f"secrets-init:{STORE_IN_CONTAINER}/{spec.name} ./secrets/{spec.name})"
    )


def web_config(password: str) -> str:
    """blackbox_exporter's web config (exporter-toolkit format) admitting WEB_CONFIG_USER with `password`."""
    # bcrypt is the one hash exporter-toolkit accepts.
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=BCRYPT_ROUNDS))  # noqa: S324
    if not hashed or not BCRYPT_HASH.search(f"  {WEB_CONFIG_USER}: '{hashed}'"):
        raise Refused("this Python's crypt module cannot make bcrypt hashes; the image's libcrypt must support $2b$")
    return (
        f"# Derived from secrets/{WEB_CONFIG_SOURCE} by secrets-init (scripts/secrets_init.py); do not edit.\n"
        f"basic_auth_users:\n  {WEB_CONFIG_USER}: '{hashed}'\n"
    )


def web_config_admits(config: str, password: str) -> bool:
    match = BCRYPT_HASH.search(config)
    return match is not None and crypt.crypt(password, match.group(1)) == match.group(1)


def derive(store: Path) -> str | None:
    """Bring blackbox_web_config in line with the stored password; None when there is no password (refused)."""
    password = read_store(store / WEB_CONFIG_SOURCE)
    if password is None:
        return None
    target = store / WEB_CONFIG
    current = read_store(target)
    if current is not None and web_config_admits(current, password):
        return f"current   secrets/{WEB_CONFIG} (matches secrets/{WEB_CONFIG_SOURCE})"
    write_atomically(target, web_config(password))
    return f"derived   secrets/{WEB_CONFIG} from secrets/{WEB_CONFIG_SOURCE} (bcrypt hash, user {WEB_CONFIG_USER})"


def run(import_dir: Path, store: Path) -> int:
    if not store.is_dir():
        print(f"secrets-init: {store} is not mounted (the secrets volume); check compose/app.yaml", file=sys.stderr)
        return 2
    status = 0
    # Every secret is looked at, so one run reports every problem, not just the first.
    for spec in SPECS:
        try:
            print(f"secrets-init: {ensure(spec, import_dir, store)}")
        except Refused as refused:
            print(f"secrets-init: refused: {refused}", file=sys.stderr)
            status = 1
    try:
        line = derive(store)
    except Refused as refused:
        print(f"secrets-init: refused: {refused}", file=sys.stderr)
        return 1
    if line:
        print(f"secrets-init: {line}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import-dir", type=Path, default=Path(os.environ.get("SECRETS_IMPORT_DIR", "/import")))
    parser.add_argument("--store", type=Path, default=Path(os.environ.get("SECRETS_STORE_DIR", STORE_IN_CONTAINER)))
    args = parser.parse_args(argv)
    return run(args.import_dir, args.store)


if __name__ == "__main__":
    sys.exit(main())
