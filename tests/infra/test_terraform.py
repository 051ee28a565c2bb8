"""Terraform for AWS (infra/terraform): formatting, validation, `terraform
test` under mock providers, checkov, and the first-boot bootstrap script.

Nothing here reaches AWS or a registry: providers come from the local
filesystem mirror (infra/terraform/offline.tfrc), and every Terraform
command runs in a temporary copy so the repository tree stays clean
(no .terraform/, no lock files, no state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness import REPO_ROOT
from harness.tools import INSTALL_DEPS, find_tool
from tests.stack.stackutil import compose_binary, secrets_init_module

TF_ROOT = REPO_ROOT / "infra" / "terraform"
MODULE = TF_ROOT / "modules" / "tally"
EXAMPLE = TF_ROOT / "examples" / "single-server"
BOOTSTRAP = MODULE / "templates" / "bootstrap.sh"
SWARM_BOOTSTRAP = MODULE / "templates" / "swarm.sh"
DOC = REPO_ROOT / "docs" / "deploy-aws.md"
CHECKOV = REPO_ROOT / ".tools" / "checkov" / "bin" / "checkov"

MODULE_TEST_FILES = sorted(p.name for p in (MODULE / "tests").glob("*.tftest.hcl"))


def _tail(text: str, limit: int = 6000) -> str:
    # Terraform echoes whole rendered values on failure; keep the end.
    return text if len(text) <= limit else "...\n" + text[-limit:]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def terraform() -> str:
    return find_tool("terraform", INSTALL_DEPS, "/usr/local/bin/terraform")


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TF_CLI_CONFIG_FILE=str(TF_ROOT / "offline.tfrc"),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
        # Shared across the copies: the provider is linked, not copied again.
        TF_PLUGIN_CACHE_DIR=str(tmp_path_factory.mktemp("tf-plugin-cache")),
    )
    env.pop("TF_DATA_DIR", None)
    return env


@pytest.fixture(scope="module")
def tf_copy(tmp_path_factory) -> Path:
    """A pristine copy of infra/terraform (module paths stay relative)."""
    dest = tmp_path_factory.mktemp("tf") / "terraform"
    shutil.copytree(
        TF_ROOT,
        dest,
        ignore=shutil.ignore_patterns(".terraform", ".terraform.lock.hcl", "*.tfstate*", "terraform.tfvars"),
    )
    return dest


def _init(terraform: str, workdir: Path, env: dict[str, str]) -> None:
    res = _run([terraform, "init", "-backend=false", "-input=false", "-no-color"], workdir, env)
    assert res.returncode == 0, f"terraform init (offline) failed in {workdir}:\n{res.stdout}\n{res.stderr}"


@pytest.fixture(scope="module")
def module_dir(terraform, tf_env, tf_copy) -> Path:
    workdir = tf_copy / "modules" / "tally"
    _init(terraform, workdir, tf_env)
    return workdir


@pytest.fixture(scope="module")
def example_dir(terraform, tf_env, tf_copy) -> Path:
    workdir = tf_copy / "examples" / "single-server"
    _init(terraform, workdir, tf_env)
    return workdir


# --------------------------------------------------------------------------
# Terraform


@pytest.mark.slow
def test_fmt(terraform):
    res = _run([terraform, "fmt", "-check", "-recursive", "-diff", "-no-color", str(TF_ROOT)], REPO_ROOT)
    assert res.returncode == 0, f"terraform fmt -check found unformatted files:\n{res.stdout}{res.stderr}"


def test_offline_cli_config_points_at_the_mirror():
    text = (TF_ROOT / "offline.tfrc").read_text()
    assert re.search(r'filesystem_mirror\s*{[^}]*path\s*=\s*"/opt/tf-plugins"', text), text
    assert re.search(r'direct\s*{[^}]*exclude\s*=\s*\["registry.terraform.io/\*/\*"\]', text), text


@pytest.mark.slow
def test_validate_example(terraform, tf_env, example_dir):
    # The module alone cannot be validated: it expects its caller to pass the
    # aws.us_east_1 provider. The example root is the caller.
    res = _run([terraform, "validate", "-no-color", "-json"], example_dir, tf_env)
    report = json.loads(res.stdout)
    assert res.returncode == 0 and report["valid"], json.dumps(report["diagnostics"], indent=2)
    assert report["warning_count"] == 0, json.dumps(report["diagnostics"], indent=2)


@pytest.mark.slow
@pytest.mark.parametrize("test_file", MODULE_TEST_FILES)
def test_module_terraform_test(terraform, tf_env, module_dir, test_file):
    # One file per invocation so a failure names its concern; each run block
    # costs a provider start (~1 s), which is why related checks share runs.
    res = _run([terraform, "test", "-no-color", f"-filter=tests/{test_file}"], module_dir, tf_env)
    assert res.returncode == 0, f"terraform test {test_file} failed:\n{_tail(res.stdout + res.stderr)}"
    assert re.search(r"Success! [1-9][0-9]* passed, 0 failed", res.stdout), _tail(res.stdout)


def test_module_has_the_expected_test_files():
    # Guards against a test file being renamed away from the *.tftest.hcl glob.
    assert set(MODULE_TEST_FILES) >= {
        "security.tftest.hcl",
        "backups.tftest.hcl",
        "cloud_init.tftest.hcl",
        "dns_monitoring.tftest.hcl",
        "validation.tftest.hcl",
        "scale.tftest.hcl",
    }


@pytest.mark.slow
def test_example_terraform_test(terraform, tf_env, example_dir):
    res = _run([terraform, "test", "-no-color"], example_dir, tf_env)
    assert res.returncode == 0, f"terraform test (example) failed:\n{_tail(res.stdout + res.stderr)}"
    assert re.search(r"Success! [1-9][0-9]* passed, 0 failed", res.stdout), _tail(res.stdout)


def test_every_variable_is_described():
    for tf in [*MODULE.glob("*.tf"), *EXAMPLE.glob("*.tf")]:
        text = tf.read_text()
        for match in re.finditer(r'^variable "([^"]+)" {\n(.*?)^}', text, re.S | re.M):
            assert re.search(r'^\s+description\s*=\s*".{10,}', match.group(2), re.M), (
                f"{tf.name}: variable {match.group(1)} has no description"
            )
        for match in re.finditer(r'^output "([^"]+)" {\n(.*?)^}', text, re.S | re.M):
            assert "description" in match.group(2), f"{tf.name}: output {match.group(1)} has no description"


def test_data_volume_is_protected():
    text = (MODULE / "storage.tf").read_text()
    block = re.search(r'resource "aws_ebs_volume" "data" {(.*?)^}', text, re.S | re.M).group(1)
    assert re.search(r"prevent_destroy\s*=\s*true", block), "the data volume must be protected from destroy"
    assert re.search(r"encrypted\s*=\s*true", block)


# --------------------------------------------------------------------------
# checkov


def _checkov_results() -> dict:
    if not os.access(CHECKOV, os.X_OK):
        pytest.fail(f"checkov is missing at {CHECKOV} (scripts/install-test-deps.sh creates that venv)")
    res = _run(
        [str(CHECKOV), "-d", str(TF_ROOT), "--framework", "terraform", "--skip-download", "-o", "json"],
        REPO_ROOT,
        timeout=600,
    )
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"checkov produced no JSON report (exit {res.returncode}):\n{res.stdout}\n{res.stderr}")
    if isinstance(report, list):
        (report,) = [r for r in report if r.get("check_type") == "terraform"]
    return report


@pytest.fixture(scope="module")
def checkov_report() -> dict:
    return _checkov_results()


@pytest.mark.slow
def test_checkov_no_failed_check(checkov_report):
    results = checkov_report.get("results", {})
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']}): {c['check_name']}"
        for c in results.get("failed_checks", [])
    ]
    assert not failed, "checkov failures (fix, or skip inline with a reason):\n" + "\n".join(failed)
    # An empty scan would pass trivially.
    assert len(results.get("passed_checks", [])) >= 40, "checkov scanned (almost) nothing"


@pytest.mark.slow
def test_checkov_skips_are_justified(checkov_report):
    skipped = checkov_report.get("results", {}).get("skipped_checks", [])
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.strip()) >= 30, f"{check['check_id']} on {check['resource']} is skipped without a real reason"


# --------------------------------------------------------------------------
# bootstrap script (embedded in the cloud-init user data)


def test_bootstrap_shellcheck():
    shellcheck = find_tool("shellcheck")
    # -x: the swarm script sources the bootstrap's functions.
    res = _run([shellcheck, "-x", "--severity=style", str(BOOTSTRAP), str(SWARM_BOOTSTRAP)], REPO_ROOT)
    assert res.returncode == 0, res.stdout + res.stderr


FAKE_AWS = r"""#!/bin/bash
# Fake AWS CLI: an SSM parameter store in $FAKE_SSM_DIR; records argv.
printf '%s\n' "$*" >>"$FAKE_SSM_DIR/argv.log"
op="$1 $2"; shift 2
name="" value="" overwrite=""
while (($#)); do
  case $1 in
    --name) name=$2; shift 2 ;;
    --value) value=$2; shift 2 ;;
    --overwrite) overwrite=1; shift ;;
    *) shift ;;
  esac
done
key=$FAKE_SSM_DIR/param${name//\//_}
case $op in
  "ssm get-parameter")
    if [[ -f $FAKE_SSM_DIR/broken ]]; then echo "An error occurred (ThrottlingException)" >&2; exit 254; fi
    if [[ -f $key ]]; then cat "$key"; echo; exit 0; fi
    echo "An error occurred (ParameterNotFound) when calling the GetParameter operation: " >&2
    exit 254 ;;
  "ssm put-parameter")
    if [[ -f $key && -z $overwrite ]]; then echo "An error occurred (ParameterAlreadyExists)" >&2; exit 254; fi
    if [[ $value == file://* ]]; then cat "${value#file://}" >"$key"; else printf '%s' "$value" >"$key"; fi ;;
  *) echo "unexpected: $op" >&2; exit 2 ;;
esac
"""


def _write_exe(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def sandbox(tmp_path):
    """Fake PATH tools + an SSM store + a checkout directory."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    store = tmp_path / "ssm"
    store.mkdir()
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    _write_exe(bindir / "aws", FAKE_AWS)
    # blkid -p answers with $FAKE_BLKID_RC; mkfs.ext4 only records its call.
    _write_exe(bindir / "blkid", '#!/bin/bash\nexit "${FAKE_BLKID_RC:-0}"\n')
    _write_exe(bindir / "mkfs.ext4", '#!/bin/bash\nprintf "%s\\n" "$*" >>"$FAKE_SSM_DIR/mkfs.log"\n')
    stack_env = tmp_path / "stack.env"
    stack_env.write_text(
        "ACME_EMAIL='ops@example.com'\nBACKUP_S3_BUCKET='b'\nBACKUP_S3_REGION='eu-west-1'\n"
        "DOMAIN='tally.example.com'\nUSER_NAME='Example Ops'\nUSER_URL='#'\n"
    )
    env = {
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_SSM_DIR": str(store),
        "TALLY_CHECKOUT": str(checkout),
        "TALLY_STACK_ENV": str(stack_env),
        "TALLY_AWS_REGION": "eu-west-1",
        "TALLY_SSM_PREFIX": "/tally",
        "TALLY_SECRET_NAMES": "postgres_password secret_key grafana_admin_password",
        "TALLY_BACKUP_AGE_RECIPIENT": "",
    }
    return {"env": env, "store": store, "checkout": checkout, "tmp": tmp_path}


def _bootstrap(sandbox, snippet: str, script: Path = BOOTSTRAP, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**sandbox["env"], **extra_env}
    return subprocess.run(
        ["bash", "-c", f'source "$1"; {snippet}', "bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bootstrap_generates_missing_secrets_into_ssm(sandbox):
    res = _bootstrap(sandbox, "write_secrets")
    assert res.returncode == 0, res.stderr
    store, secrets = sandbox["store"], sandbox["checkout"] / "secrets"
    argv_log = (store / "argv.log").read_text()
    for name in ("postgres_password", "secret_key", "grafana_admin_password"):
        stored = (store / f"param_tally_{name}").read_text()
        assert re.fullmatch(r"[0-9a-f]{64}", stored), f"{name}: {stored!r}"
        assert (secrets / name).read_text() == stored, f"{name} file differs from SSM"
        # The value travels in a file, never on a command line.
        assert stored not in argv_log
    assert "--type SecureString" in argv_log
    assert "--overwrite" not in argv_log
    assert len({(secrets / n).read_text() for n in ("postgres_password", "secret_key", "grafana_admin_password")}) == 3
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    assert secrets.stat().st_uid == 10001  # secrets-init (uid 10001) imports from here
    assert not (secrets / "backup_age_recipient").exists()
    assert not (secrets / "aws_credentials").exists()


def test_bootstrap_reuses_existing_secrets(sandbox):
    store = sandbox["store"]
    (store / "param_tally_postgres_password").write_text("existing-db-password")
    (store / "param_tally_secret_key").write_text("k" * 64)
    (store / "param_tally_grafana_admin_password").write_text("grafana-pass")
    age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
    res = _bootstrap(sandbox, "write_secrets", TALLY_BACKUP_AGE_RECIPIENT=age)
    assert res.returncode == 0, res.stderr
    secrets = sandbox["checkout"] / "secrets"
    # A replaced instance must keep the password the database was created with.
    assert (secrets / "postgres_password").read_text() == "existing-db-password"
    assert (secrets / "grafana_admin_password").read_text() == "grafana-pass"
    assert (secrets / "backup_age_recipient").read_text().strip() == age
    # The offsite overlay mounts aws_credentials; write_secrets leaves it
    # without a key (write_backup_credentials fills it from IMDS).
    creds = (secrets / "aws_credentials").read_text()
    assert "aws_access_key_id" not in creds and "[" not in creds
    assert "put-parameter" not in (store / "argv.log").read_text()


def test_bootstrap_hands_the_role_credentials_to_the_backup_sidecar(sandbox):
    """IMDS answers the host only (hop limit 1): the host writes the sidecar's credentials file, in place."""
    import http.server
    import threading

    class Imds(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802 - http.server's naming
            self._answer("token-1" if self.path == "/latest/api/token" else None)

        def do_GET(self):  # noqa: N802
            if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
                self._answer(None)
            elif self.path == "/latest/meta-data/iam/security-credentials/":
                self._answer("tally-server-role\n")
            elif self.path == "/latest/meta-data/iam/security-credentials/tally-server-role":
                self._answer(json.dumps({"AccessKeyId": "ASIAFAKE", "SecretAccessKey": "s3cr3t", "Token": "tok"}))
            else:
                self._answer(None)

        def _answer(self, body):
            self.send_response(200 if body is not None else 401)
            self.end_headers()
            self.wfile.write((body or "").encode())

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Imds)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"
        imds = f"http://127.0.0.1:{server.server_port}"
        res = _bootstrap(sandbox, "write_secrets", TALLY_BACKUP_AGE_RECIPIENT=age)
        assert res.returncode == 0, res.stderr
        creds = sandbox["checkout"] / "secrets" / "aws_credentials"
        inode = creds.stat().st_ino
        res = _bootstrap(sandbox, "write_backup_credentials", TALLY_BACKUP_AGE_RECIPIENT=age, TALLY_IMDS_URL=imds)
        assert res.returncode == 0, res.stderr
    finally:
        server.shutdown()
    text = creds.read_text()
    assert text.startswith("[default]\n")
    assert "aws_access_key_id = ASIAFAKE" in text and "aws_session_token = tok" in text
    assert creds.stat().st_ino == inode, "rewritten in place: the sidecar's bind mount keeps seeing it"
    assert "s3cr3t" not in res.stdout + res.stderr


def test_bootstrap_stops_when_ssm_is_broken(sandbox):
    (sandbox["store"] / "broken").touch()
    # No retry window, so the test does not wait out the 300 s default.
    res = _bootstrap(sandbox, "write_secrets", TALLY_SSM_RETRY_SECONDS="0")
    assert res.returncode != 0
    assert "cannot read SSM parameter /tally/postgres_password" in res.stderr
    assert not (sandbox["checkout"] / "secrets" / "postgres_password").exists()
    assert "put-parameter" not in (sandbox["store"] / "argv.log").read_text()


def test_bootstrap_dotenv_merges_example_and_managed_values(sandbox):
    checkout = sandbox["checkout"]
    (checkout / ".env.example").write_text(
        "# Tally\nDOMAIN=\nexport ACME_EMAIL=you@example.com\nAPP_REPLICAS=2\nUSER_NAMES=keep-me\n"
    )
    res = _bootstrap(sandbox, "write_dotenv")
    assert res.returncode == 0, res.stderr
    dotenv = (checkout / ".env").read_text()
    keys = [line.split("=", 1)[0] for line in dotenv.splitlines() if "=" in line and not line.startswith("#")]
    assert keys.count("DOMAIN") == 1 and "DOMAIN='tally.example.com'" in dotenv
    assert "ACME_EMAIL='ops@example.com'" in dotenv and "you@example.com" not in dotenv
    assert "APP_REPLICAS=2" in dotenv, "defaults from .env.example must be kept"
    assert "USER_NAMES=keep-me" in dotenv, "only exact managed keys may be dropped"
    assert stat.S_IMODE((checkout / ".env").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("blkid_rc", "formats", "succeeds"),
    [(2, True, True), (0, False, True), (4, False, False)],
    ids=["blank-volume-formatted", "existing-filesystem-kept", "unreadable-volume-refused"],
)
def test_bootstrap_formats_only_blank_volumes(sandbox, blkid_rc, formats, succeeds):
    res = _bootstrap(sandbox, "ensure_filesystem /dev/fake-data", FAKE_BLKID_RC=str(blkid_rc))
    assert (res.returncode == 0) == succeeds, res.stderr
    mkfs_log = sandbox["store"] / "mkfs.log"
    assert mkfs_log.exists() == formats, res.stderr
    if formats:
        assert "/dev/fake-data" in mkfs_log.read_text()


# --------------------------------------------------------------------------
# documentation


def test_deploy_doc_covers_the_operator_path():
    text = DOC.read_text()
    for needle in (
        "terraform init",
        "terraform plan",
        "terraform apply",
        "terraform destroy",
        "instance_type",
        "```mermaid",
        "offline.tfrc",
        "use_lockfile",
        "prevent_destroy",
    ):
        assert needle in text, f"docs/deploy-aws.md does not mention {needle!r}"
    assert re.search(r"(?i)cost", text)
    outputs = re.findall(r'^output "([^"]+)"', (EXAMPLE / "outputs.tf").read_text(), re.M)
    missing = [o for o in outputs if f"`{o}`" not in text]
    assert not missing, f"outputs not documented in docs/deploy-aws.md: {missing}"


def test_tfvars_example_sets_every_required_variable():
    text = (EXAMPLE / "variables.tf").read_text()
    required = [
        m.group(1)
        for m in re.finditer(r'^variable "([^"]+)" {\n(.*?)^}', text, re.S | re.M)
        if "default" not in m.group(2)
    ]
    example = (EXAMPLE / "terraform.tfvars.example").read_text()
    assert required, "expected required variables (repo_url, repo_ref)"
    for name in required:
        assert re.search(rf"^{name}\s*=", example, re.M), f"terraform.tfvars.example does not set {name}"


# --------------------------------------------------------------------------
# swarm bootstrap (database = "rds"): join and Swarm secrets, with a fake docker

FAKE_DOCKER = r"""#!/bin/bash
# Fake docker: records argv; Swarm secrets are files $FAKE_SSM_DIR/secret_<name> holding their label.
printf '%s\n' "$*" >>"$FAKE_SSM_DIR/docker.log"
case "$1 $2" in
  "info --format") echo "${FAKE_SWARM_STATE:-inactive}" ;;
  "secret inspect") [[ -f $FAKE_SSM_DIR/secret_${!#} ]] && cat "$FAKE_SSM_DIR/secret_${!#}" || exit 1 ;;
  "secret create") printf '%s' "${4#tally.sha256=}" >"$FAKE_SSM_DIR/secret_$5" ;;
  "secret rm") rm "$FAKE_SSM_DIR/secret_$3" ;;
esac
"""


def _swarm(sandbox, snippet: str, **extra_env: str) -> subprocess.CompletedProcess:
    bindir = sandbox["tmp"] / "bin"
    _write_exe(bindir / "docker", FAKE_DOCKER)
    _write_exe(bindir / "systemctl", '#!/bin/bash\nprintf "%s\\n" "$*" >>"$FAKE_SSM_DIR/systemctl.log"\n')
    daemon_json = str(sandbox["tmp"] / "etc-docker" / "daemon.json")
    return _bootstrap(
        sandbox,
        snippet,
        SWARM_BOOTSTRAP,
        TALLY_BOOTSTRAP=str(BOOTSTRAP),
        TALLY_DOCKER_DAEMON_JSON=daemon_json,
        **extra_env,
    )


def test_swarm_worker_joins_with_the_token_the_manager_published(sandbox):
    store = sandbox["store"]
    (store / "param_tally-swarm_worker-join").write_text("SWMTKN-1-abc 10.42.1.5:2377")
    res = _swarm(sandbox, "swarm_join", TALLY_SWARM_JOIN_PARAM="/tally-swarm/worker-join")
    assert res.returncode == 0, res.stderr
    assert "swarm join --token SWMTKN-1-abc 10.42.1.5:2377" in (store / "docker.log").read_text()


# IMDSv2: a token, then the instance's private address.
FAKE_CURL = r"""#!/bin/bash
case "$*" in
  *"-X PUT"*/latest/api/token) echo imds-token ;;
  *"X-aws-ec2-metadata-token: imds-token"*/latest/meta-data/local-ipv4) echo 10.42.1.5 ;;
  *"X-aws-ec2-metadata-token: imds-token"*/security-credentials/) echo tally-server-role ;;
  *"X-aws-ec2-metadata-token: imds-token"*/security-credentials/tally-server-role)
    echo '{"AccessKeyId": "ASIAFAKE", "SecretAccessKey": "s3cr3t", "Token": "tok"}' ;;
  *) echo "curl: (22) unexpected: $*" >&2; exit 22 ;;
esac
"""


def test_swarm_manager_publishes_engine_metrics_on_its_private_address(sandbox):
    """dockerd on the manager gets metrics-addr <private address>:9323 before `swarm init`; a re-run changes nothing."""
    _write_exe(sandbox["tmp"] / "bin" / "curl", FAKE_CURL)
    store, daemon_json = sandbox["store"], sandbox["tmp"] / "etc-docker" / "daemon.json"
    daemon_json.parent.mkdir()
    daemon_json.write_text('{"log-driver": "local", "log-opts": {"max-size": "10m"}, "live-restore": false}\n')
    env = {"TALLY_SWARM_JOIN_PARAM": "/tally-swarm/worker-join"}
    # umask 077: the file must still be readable by everyone (dockerd's own mode).
    res = _swarm(sandbox, "umask 077; swarm_init", **env)
    assert res.returncode == 0, res.stderr
    assert json.loads(daemon_json.read_text()) == {
        "log-driver": "local",
        "log-opts": {"max-size": "10m"},
        "live-restore": False,
        "metrics-addr": "10.42.1.5:9323",
    }
    assert stat.S_IMODE(daemon_json.stat().st_mode) == 0o644
    assert not daemon_json.with_name("daemon.json.new").exists()
    assert (store / "systemctl.log").read_text() == "restart docker\n"
    assert res.stderr.count("dockerd metrics on 10.42.1.5:9323") == 1, res.stderr
    # Waited for the restarted engine before initialising the swarm.
    calls = (store / "docker.log").read_text().splitlines()
    assert "info" in calls and calls.index("info") < calls.index("swarm init --advertise-addr 10.42.1.5"), calls

    before = daemon_json.read_bytes()
    res = _swarm(sandbox, "swarm_init", FAKE_SWARM_STATE="active", **env)
    assert res.returncode == 0, res.stderr
    assert daemon_json.read_bytes() == before
    assert (store / "systemctl.log").read_text() == "restart docker\n", "a re-run must not restart docker"
    assert "dockerd metrics" not in res.stderr


def test_swarm_engine_metrics_creates_a_missing_daemon_json_and_refuses_a_broken_one(sandbox):
    daemon_json = sandbox["tmp"] / "etc-docker" / "daemon.json"
    res = _swarm(sandbox, "engine_metrics 10.42.1.5")
    assert res.returncode == 0, res.stderr
    assert json.loads(daemon_json.read_text()) == {"metrics-addr": "10.42.1.5:9323"}
    assert (sandbox["store"] / "systemctl.log").read_text() == "restart docker\n"
    # Not JSON: a clear answer, and neither the file nor docker is touched.
    daemon_json.write_text('{"log-driver": "local",\n')
    res = _swarm(sandbox, "engine_metrics 10.42.1.5")
    assert res.returncode != 0 and "daemon.json is not a JSON object" in res.stderr
    assert daemon_json.read_text() == '{"log-driver": "local",\n'
    assert (sandbox["store"] / "systemctl.log").read_text() == "restart docker\n"


def test_swarm_secrets_created_once_and_a_rotated_db_password_swapped(sandbox):
    store, secrets = sandbox["store"], sandbox["checkout"] / "secrets"
    secrets.mkdir()
    for name in ("secret_key", "postgres_password", "db_ca"):
        (secrets / name).write_text(f"{name}-v1")
    stack = sandbox["tmp"] / "tally-stack.yaml"
    stack.write_text(
        "secrets:\n  secret_key: {external: true}\n  postgres_password: {external: true}\n  db_ca: {external: true}\n"
    )
    assert _swarm(sandbox, f"create_swarm_secrets {stack}").returncode == 0
    assert _swarm(sandbox, f"create_swarm_secrets {stack}").returncode == 0
    log = (store / "docker.log").read_text()
    assert sorted(line.split()[-2] for line in log.splitlines() if line.startswith("secret create")) == [
        "db_ca",
        "postgres_password",
        "secret_key",
    ], log
    # RDS rotated the master password: migrate (its only reader) goes, the secret is replaced.
    (secrets / "postgres_password").write_text("postgres_password-v2")
    res = _swarm(sandbox, f"create_swarm_secrets {stack}")
    assert res.returncode == 0, res.stderr
    tail = (store / "docker.log").read_text()[len(log) :]
    assert "service rm tally_migrate" in tail and "secret rm postgres_password" in tail
    assert tail.count("secret create") == 1
    # Any other secret changing is refused: Swarm secrets are immutable.
    (secrets / "secret_key").write_text("secret_key-v2")
    res = _swarm(sandbox, f"create_swarm_secrets {stack}")
    assert res.returncode != 0 and "secret secret_key changed" in res.stderr
    (secrets / "secret_key").write_text("secret_key-v1")
    (secrets / "db_ca").unlink()
    res = _swarm(sandbox, f"create_swarm_secrets {stack}")
    assert res.returncode != 0 and "secret db_ca" in res.stderr and "missing" in res.stderr


def test_swarm_manager_provides_every_secret_the_managed_stack_needs(tmp_path):
    """The manager's secrets (SSM + the RDS password + db_ca) are exactly the rendered stack's."""
    ssm_names = re.search(r'TALLY_SECRET_NAMES\s*=\s*"([^"]+)"', (MODULE / "compute.tf").read_text()).group(1)
    (tmp_path / "empty.env").write_text("")
    res = subprocess.run(
        [sys.executable, str(REPO_ROOT / "swarm" / "render.py"), "--out", str(tmp_path)],
        env={
            "PATH": "/usr/bin:/bin",
            "COMPOSE": f"{compose_binary()} --env-file {tmp_path / 'empty.env'}",
            "TALLY_DATABASE_HOST": "tally-0001.abcdefghijkl.eu-west-1.rds.amazonaws.com",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    stack = yaml.safe_load((tmp_path / "tally-stack.yaml").read_text())
    # postgres_password: write_db_password (Secrets Manager); db_ca: write_db_ca (RDS trust store);
    # blackbox_web_config: derive_secrets (from blackbox_password).
    assert set(stack["secrets"]) == {*ssm_names.split(), "postgres_password", "db_ca", "blackbox_web_config"}


def test_swarm_manager_derives_blackbox_web_config_from_its_password(sandbox):
    secrets, scripts = sandbox["checkout"] / "secrets", sandbox["checkout"] / "scripts"
    secrets.mkdir()
    scripts.mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "secrets_init.py", scripts)
    module = secrets_init_module()
    for spec in module.SPECS:
        (secrets / spec.name).write_text(spec.name[0] * spec.generated)
    res = _swarm(sandbox, "derive_secrets")
    assert res.returncode == 0, res.stderr
    config = (secrets / "blackbox_web_config").read_text()
    assert module.web_config_admits(config, "b" * 32) and "b" * 32 not in config
    # The same file on the next boot: create_swarm_secrets finds the same digest.
    assert _swarm(sandbox, "derive_secrets").returncode == 0
    assert (secrets / "blackbox_web_config").read_text() == config
    (secrets / "blackbox_password").write_text("short")
    res = _swarm(sandbox, "derive_secrets")
    assert res.returncode != 0 and "failed the checks" in res.stderr


# swarm/render.py as the manager runs it: records its arguments and whether the
# backup credentials were already there, and writes a stack declaring SECRETS.
FAKE_RENDER = r"""#!/bin/bash
if [[ $1 != swarm/render.py ]]; then exec "$REAL_PYTHON" "$@"; fi
creds=$(grep -c aws_access_key_id "$TALLY_CHECKOUT/secrets/aws_credentials" 2>/dev/null || true)
printf '%s creds=%s\n' "$*" "${creds:-0}" >>"$FAKE_SSM_DIR/render.log"
mkdir -p "$3"
printf 'secrets:\n' >"$3/tally-stack.yaml"
for name in $FAKE_STACK_SECRETS; do printf '  %s: {external: true}\n' "$name" >>"$3/tally-stack.yaml"; done
"""


@pytest.mark.parametrize("offsite", [True, False], ids=["with-age-recipient", "without"])
def test_swarm_manager_sets_up_the_offsite_copy_like_one_host(sandbox, offsite):
    """With a recipient the manager renders the offsite overlay, and renews the credentials its bind mount reads."""
    bindir, store, tmp = sandbox["tmp"] / "bin", sandbox["store"], sandbox["tmp"]
    _write_exe(bindir / "curl", FAKE_CURL)
    _write_exe(bindir / "python3", FAKE_RENDER)
    (tmp / "systemd").mkdir()
    age = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" if offsite else ""
    stubs = "apt_install fetch_repo write_db_password write_db_ca derive_secrets write_dotenv swarm_init wait_healthy"
    res = _swarm(
        sandbox,
        f'for f in {stubs}; do eval "$f() {{ :; }}"; done; swarm_manager',
        TALLY_BACKUP_AGE_RECIPIENT=age,
        TALLY_STACK_DIR=str(tmp / "stack"),
        TALLY_SYSTEMD_DIR=str(tmp / "systemd"),
        TALLY_IMDS_URL="http://imds.invalid",
        TALLY_DATABASE_HOST="tally-0001.abcdefghijkl.eu-west-1.rds.amazonaws.com",
        REAL_PYTHON=sys.executable,
        FAKE_STACK_SECRETS="secret_key backup_age_recipient" if offsite else "secret_key",
    )
    assert res.returncode == 0, res.stderr
    secrets = sandbox["checkout"] / "secrets"
    render = (store / "render.log").read_text()
    docker = (store / "docker.log").read_text()
    assert f"stack deploy --detach=true -c {tmp / 'stack' / 'tally-stack.yaml'} tally" in docker
    if not offsite:
        assert render == f"swarm/render.py --out {tmp / 'stack'} creds=0\n"
        assert not (secrets / "aws_credentials").exists() and not any((tmp / "systemd").iterdir())
        assert not (store / "systemctl.log").exists()
        return
    # The overlay, with the role's credentials already in the file the backup task binds.
    assert render == f"swarm/render.py --out {tmp / 'stack'} -f backup/compose.offsite.yaml creds=1\n"
    assert "aws_session_token = tok" in (secrets / "aws_credentials").read_text()
    assert "secret create --label tally.sha256=" in docker and docker.rstrip().count(" backup_age_recipient ") == 1
    assert (secrets / "backup_age_recipient").read_text() == age + "\n"
    timer = (tmp / "systemd" / "tally-backup-credentials.timer").read_text()
    assert "OnUnitActiveSec=15min" in timer
    service = (tmp / "systemd" / "tally-backup-credentials.service").read_text()
    assert "ExecStart=/usr/local/sbin/tally-bootstrap backup-credentials" in service
    assert "enable --now tally-backup-credentials.timer" in (store / "systemctl.log").read_text()
