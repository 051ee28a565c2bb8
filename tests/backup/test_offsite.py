"""Offsite copy: encrypted with age before it leaves, uploaded with `aws s3 cp`, and fetchable on a
new host. A fake `aws` on PATH stands in for S3 (a directory) and records every call."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from .conftest import Sidecar, summary

pytestmark = pytest.mark.slow  # real backups, age encryption and restores per test

FAKE_AWS = r"""#!/bin/bash
# Fake aws CLI: s3://bucket/key <-> $FAKE_S3/bucket/key; logs its arguments.
printf '%s\n' "$*" >> "$FAKE_S3/calls.log"
[[ -n $FAKE_AWS_FAIL ]] && { echo "simulated outage" >&2; exit 1; }
args=()
while (($#)); do
  case $1 in
    --endpoint-url) shift ;;
    --only-show-errors) ;;
    *) args+=("$1") ;;
  esac
  shift
done
local_path() { local u=${1#s3://}; printf '%s/%s' "$FAKE_S3" "$u"; }
case "${args[0]} ${args[1]}" in
  "s3 cp")
    src=${args[2]} dst=${args[3]}
    [[ $src == s3://* ]] && src=$(local_path "$src")
    [[ $dst == s3://* ]] && { dst=$(local_path "$dst"); mkdir -p "$(dirname "$dst")"; }
    # An S3 object appears whole or not at all: a reader must never see half an upload.
    part="$(dirname "$dst")/.$(basename "$dst").part.$$"
    cp "$src" "$part" && mv "$part" "$dst" ;;
  "s3 ls")
    for f in "$(local_path "${args[2]}")"*; do [[ -f $f ]] && echo "2026-01-01 00:00:00 1 $(basename "$f")"; done ;;
  *) echo "fake aws: unsupported $*" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def offsite(sidecar: Sidecar, tmp_path: Path) -> dict[str, str]:
    bin_dir, s3 = tmp_path / "fakebin", tmp_path / "s3"
    bin_dir.mkdir()
    s3.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    identity = tmp_path / "age-identity.txt"
    subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
    recipient = tmp_path / "age-recipient.txt"
    recipient.write_text(
        subprocess.run(["age-keygen", "-y", str(identity)], check=True, capture_output=True, text=True).stdout
    )
    return {
        "PATH": f"{bin_dir}:{sidecar.env['PATH']}",
        "FAKE_S3": str(s3),
        "BACKUP_S3_BUCKET": "tally-backups",
        "BACKUP_S3_ENDPOINT_URL": "https://minio.invalid:9000",
        "BACKUP_AGE_RECIPIENT_FILE": str(recipient),
        "BACKUP_AGE_IDENTITY_FILE": str(identity),
    }


def test_upload_is_age_encrypted_and_fetch_restores_it_on_a_new_host(
    sidecar: Sidecar, offsite: dict[str, str], tmp_path: Path
) -> None:
    sidecar.seed(40)
    result = sidecar.run("backup", BACKUP_NOW="2026-07-01T02:30:00Z", **offsite)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offsite=ok" in summary(result, "backup")

    name = "tally-20260701T023000Z"
    s3 = Path(offsite["FAKE_S3"])
    uploaded = s3 / "tally-backups" / "tally" / f"{name}.dump.age"
    plain = (sidecar.backup_dir / f"{name}.dump").read_bytes()
    encrypted = uploaded.read_bytes()
    assert encrypted.startswith(b"age-encryption.org/v1\n")
    assert plain not in encrypted and plain[:64] not in encrypted
    decrypted = subprocess.run(
        ["age", "--decrypt", "-i", offsite["BACKUP_AGE_IDENTITY_FILE"], str(uploaded)], check=True, capture_output=True
    ).stdout
    assert hashlib.sha256(decrypted).digest() == hashlib.sha256(plain).digest()
    calls = (s3 / "calls.log").read_text().splitlines()
    assert calls[0] == (
        f"--endpoint-url https://minio.invalid:9000 s3 cp --only-show-errors "
        f"{sidecar.backup_dir}/.tmp/{name}.dump.age s3://tally-backups/tally/{name}.dump.age"
    )
    assert (s3 / "tally-backups" / "tally" / f"{name}.manifest").exists()
    metrics = sidecar.metrics()
    assert metrics["tally_backup_offsite_last_run_success"] == 1
    assert metrics["tally_backup_offsite_last_success_timestamp_seconds"] == 1782873000

    # a new host: empty backup directory, the identity kept offline by the operator
    new_host = tmp_path / "new-host-backups"
    fetched = sidecar.run("backup-offsite", "fetch", "latest", BACKUP_DIR=str(new_host), **offsite)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert (new_host / f"{name}.dump").read_bytes() == plain
    verified = sidecar.run("verify", name, BACKUP_DIR=str(new_host))
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_offsite_failure_keeps_the_local_backup_and_is_reported(sidecar: Sidecar, offsite: dict[str, str]) -> None:
    sidecar.seed(5)
    result = sidecar.run("backup", FAKE_AWS_FAIL="1", **offsite)
    assert result.returncode == 3
    assert "local=ok offsite=failed" in summary(result, "backup")
    assert len(sidecar.dumps()) == 1
    metrics = sidecar.metrics()
    assert metrics["tally_backup_offsite_last_run_success"] == 0
    assert metrics["tally_backup_last_run_success"] == 1


def test_no_recipient_means_no_upload(sidecar: Sidecar, offsite: dict[str, str], tmp_path: Path) -> None:
    sidecar.seed(5)
    result = sidecar.run("backup", **(offsite | {"BACKUP_AGE_RECIPIENT_FILE": str(tmp_path / "none")}))
    assert result.returncode == 3
    assert not (Path(offsite["FAKE_S3"]) / "calls.log").exists()
