""".gitlab-ci.yml: schema, pipeline shape per ref type, and the jobs that can really run here.

- Schema: GitLab's CI schema as vendored by check-jsonschema (offline).
- Which jobs run for a merge request, the default branch and a release tag: gitlab-ci-local evaluates the
  job `rules:` itself (`--list-csv` with predefined variables overridden). gitlab-ci-local ignores
  `workflow:rules`, so those are evaluated by the small evaluator below (it handles exactly the expression
  forms GitLab documents for workflow rules: `$VAR`, `==`, `!=`, `=~ /re/`, `&&`, `||`).
- Execution: gitlab-ci-local `--force-shell-executor` runs `version`, `yamllint` and `shellcheck` on a
  snapshot of the working tree. Only these: they call tools that exist on this machine (yamllint from
  .venv, Debian's shellcheck, POSIX sh). The other lint jobs need their container image's tooling
  (terraform providers from the registry, node for dclint, prom/* images) or Docker itself (build, smoke,
  deploy), which this machine does not have; they are covered by the schema and the structure tests here.

gitlab-ci-local is resolved at <repo>/.tools/node/node_modules/.bin/gitlab-ci-local (installed with
`npm --prefix .tools/node install --save-exact gitlab-ci-local@4.64.1`); missing means FAIL, not skip.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped,unused-ignore]

ROOT = Path(__file__).resolve().parents[2]
CI_FILE = ROOT / ".gitlab-ci.yml"
VENV_BIN = ROOT / ".venv" / "bin"
GCL = ROOT / ".tools" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"

LINT_TEST_STAGES = {"lint", "test"}


def ci() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CI_FILE.read_text())
    return data


def jobs(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    reserved = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache"}
    return {k: v for k, v in config.items() if not k.startswith(".") and k not in reserved}


def resolved(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A job with `extends:` applied (deep merge of mappings, as GitLab does)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    job = config[name]
    parents = job.get("extends", [])
    parents = [parents] if isinstance(parents, str) else parents
    result: dict[str, Any] = {}
    for parent in parents:
        result = merge(result, resolved(config, parent))
    return merge(result, {k: v for k, v in job.items() if k != "extends"})


def script_text(job: dict[str, Any]) -> str:
    return "\n".join(str(line) for key in ("before_script", "script") for line in job.get(key, []))


# ----------------------------------------------------------------------------------------------- schema


def run_schema(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_schema_valid() -> None:
    proc = run_schema(CI_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_rejects_a_broken_copy(tmp_path: Path) -> None:
    # The validator must bite on this file's own structure, or the test above proves nothing.
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(CI_FILE.read_text().replace("      when: manual\n", "      when: sometimes\n", 1))
    assert broken.read_text() != CI_FILE.read_text()
    proc = run_schema(broken)
    assert proc.returncode != 0


# ------------------------------------------------------------------------------------- workflow:rules

TOKEN = re.compile(r"\s*(\|\||&&|==|!=|=~|\$\w+|\"[^\"]*\"|'[^']*'|/(?:\\/|[^/])*/)")


def evaluate(expr: str, env: dict[str, str]) -> bool:
    tokens = TOKEN.findall(expr)
    assert "".join(tokens).replace(" ", "") == expr.replace(" ", ""), f"unsupported expression: {expr}"

    def value(tok: str) -> str | None:
        if tok.startswith("$"):
            return env.get(tok[1:]) or None
        return tok[1:-1]

    def atom(parts: list[str]) -> bool:
        if len(parts) == 1:
            return value(parts[0]) is not None
        left, op, right = parts
        lv = value(left)
        if op == "=~":
            return lv is not None and re.search(right[1:-1], lv) is not None
        rv = value(right)
        return (lv == rv) if op == "==" else (lv != rv)

    def conj(parts: list[str]) -> bool:
        groups: list[list[str]] = [[]]
        for tok in parts:
            if tok == "&&":
                groups.append([])
            else:
                groups[-1].append(tok)
        return all(atom(g) for g in groups)

    alternatives: list[list[str]] = [[]]
    for tok in tokens:
        if tok == "||":
            alternatives.append([])
        else:
            alternatives[-1].append(tok)
    return any(conj(a) for a in alternatives)


def pipeline_created(env: dict[str, str]) -> bool:
    for rule in ci()["workflow"]["rules"]:
        if "if" not in rule or evaluate(rule["if"], env):
            return bool(rule.get("when", "always") != "never")
    return False


PUSH_MAIN = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "main", "CI_DEFAULT_BRANCH": "main"}
PUSH_FEATURE = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_BRANCH": "feature/x", "CI_DEFAULT_BRANCH": "main"}
PUSH_TAG = {"CI_PIPELINE_SOURCE": "push", "CI_COMMIT_TAG": "v1.0.0", "CI_DEFAULT_BRANCH": "main"}
MR = {"CI_PIPELINE_SOURCE": "merge_request_event", "CI_MERGE_REQUEST_IID": "4", "CI_DEFAULT_BRANCH": "main"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (MR, True),
        (PUSH_MAIN, True),
        (PUSH_TAG, True),
        (PUSH_FEATURE, True),
        # The branch pipeline duplicate of an MR pipeline must not be created.
        (PUSH_FEATURE | {"CI_OPEN_MERGE_REQUESTS": "tally/tally!4"}, False),
    ],
    ids=["mr", "main", "tag", "feature-without-mr", "feature-with-open-mr"],
)
def test_workflow_rules_avoid_duplicate_pipelines(env: dict[str, str], expected: bool) -> None:
    assert pipeline_created(env) is expected


def test_workflow_evaluator_sanity() -> None:
    assert evaluate('$A == "x" && $B', {"A": "x", "B": "1"})
    assert not evaluate('$A == "x" && $B', {"A": "x"})
    assert evaluate("$A =~ /^v\\d+/ || $C", {"A": "v1"})
    assert evaluate("$A != $B", {"A": "main", "B": "dev"})


# --------------------------------------------------------------------------------- gitlab-ci-local


def gitlab_ci_local() -> str:
    assert GCL.exists(), (
        f"{GCL} missing: npm --prefix {ROOT / '.tools/node'} install --save-exact gitlab-ci-local@4.64.1"
    )
    assert shutil.which("node"), "node (>=18) is required by gitlab-ci-local"
    return str(GCL)


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree (tracked + untracked, minus ignored) as a fresh one-commit repo on `main`.

    A copy, because gitlab-ci-local writes .gitlab-ci-local/ and shell jobs write into the checkout.
    """
    dest = tmp_path_factory.mktemp("pipeline")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = ROOT / rel
        if not src.is_file() or rel.startswith(".gitlab-ci-local"):
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "snapshot", "--no-verify"], cwd=dest, check=True)
    return dest


def gcl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
        "HOME": str(cwd.parent / f"{cwd.name}-home"),
        "LANG": "C.UTF-8",
    }
    Path(env["HOME"]).mkdir(exist_ok=True)
    return subprocess.run(
        # The schema is checked by check-jsonschema above; skipping gitlab-ci-local's copy saves seconds per call.
        [gitlab_ci_local(), "--no-color", "--no-json-schema-validation", "--max-job-name-padding", "0", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def listed_jobs(cwd: Path, *variables: str) -> dict[str, dict[str, str]]:
    proc = gcl(cwd, "--list-csv", *variables)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    body = proc.stdout[proc.stdout.index("name;description;stage") :]
    return {row["name"]: row for row in csv.DictReader(io.StringIO(body), delimiter=";")}


MR_VARS = (
    "--variable", "CI_PIPELINE_SOURCE=merge_request_event",
    "--variable", "CI_MERGE_REQUEST_IID=4",
    "--unset-variable", "CI_COMMIT_BRANCH",
)  # fmt: skip
TAG_VARS = ("--variable", "CI_COMMIT_TAG=v1.0.0", "--unset-variable", "CI_COMMIT_BRANCH")


def test_merge_requests_run_lint_and_test_only(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, *MR_VARS)
    assert {row["stage"] for row in listed.values()} == LINT_TEST_STAGES
    assert {"pytest", "ruff", "mypy", "hadolint", "shellcheck", "yamllint", "terraform"} <= set(listed)


def test_feature_branch_runs_lint_and_test_only(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, "--variable", "CI_COMMIT_BRANCH=feature/x")
    assert {row["stage"] for row in listed.values()} == LINT_TEST_STAGES


def test_default_branch_builds_scans_smokes_and_deploys(snapshot: Path) -> None:
    listed = listed_jobs(snapshot)
    assert list(ci()["stages"]) == ["lint", "test", "build", "scan", "smoke", "deploy"]
    assert {row["stage"] for row in listed.values()} == set(ci()["stages"])
    assert listed["deploy-staging"]["when"] == "on_success"
    assert listed["deploy-production"]["when"] == "manual"
    for name in ("build-image", "container-scan", "dependency-scan", "smoke"):
        assert listed[name]["when"] == "on_success", name


def test_tags_deploy_production_manually_and_never_staging(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, *TAG_VARS)
    assert "deploy-staging" not in listed
    assert listed["deploy-production"]["when"] == "manual"
    assert "build-image" in listed and "smoke" in listed


def test_jobs_run_locally_in_shell_mode(snapshot: Path) -> None:
    proc = gcl(snapshot, "--force-shell-executor", "version", "yamllint", "shellcheck")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for job in ("version", "yamllint", "shellcheck"):
        assert re.search(rf"PASS\s+{job}\b", out), f"{job} did not pass:\n{out}"
    # The shellcheck job really looked at the deploy script, and the version job printed both forms.
    assert "./scripts/deploy.sh" in out
    assert re.search(r"\b\d+\.\d+\.\d+\+build\.\d+\b", out) and re.search(r"\b\d+\.\d+\.\d+-build\.\d+\b", out)


def test_local_jobs_fail_on_bad_input(tmp_path: Path) -> None:
    # A minimal tree (the pipeline file, lint config, version files) plus one broken shell script and one
    # broken YAML file: each local job must fail on it, so a PASS above means something.
    tree = tmp_path / "broken"
    for rel in (".gitlab-ci.yml", ".yamllint.yaml", ".gitignore", "version.txt", "scripts/version.sh"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, tree / rel)
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=tree, check=True)
    subprocess.run([*git, "add", "-A"], cwd=tree, check=True)
    subprocess.run([*git, "commit", "-qm", "minimal", "--no-verify"], cwd=tree, check=True)

    proc = gcl(tree, "--force-shell-executor", "version", "yamllint", "shellcheck")
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Now break all three inputs at once: a release tag that disagrees with version.txt, a shell script
    # with unquoted expansions, a YAML file with a duplicate key and a syntax error.
    (tree / "scripts" / "zz-broken.sh").write_text("#!/bin/sh\nrm -rf $1/*\nif [ $x = 1 ]; then echo; fi\n")
    (tree / "zz-broken.yaml").write_text("a: 1\na: 2\n  b: [\n")
    proc = gcl(
        tree, "--force-shell-executor", "--variable", "CI_COMMIT_TAG=v99.0.0", "version", "yamllint", "shellcheck"
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for job in ("version", "yamllint", "shellcheck"):
        assert re.search(rf"FAIL\s+{job}\b", out), f"{job} passed on broken input:\n{out}"
    assert "does not match version.txt" in out
    assert "zz-broken.sh" in out and "zz-broken.yaml" in out


# ------------------------------------------------------------------------------------- structure


def test_pytest_job_uses_postgres_service_and_publishes_reports() -> None:
    config = ci()
    job = resolved(config, "pytest")
    services = [s if isinstance(s, str) else s["name"] for s in job["services"]]
    assert "postgres:15" in services
    alias = next(s.get("alias", "postgres") for s in job["services"] if not isinstance(s, str))
    for var in ("DATABASE_URL", "TEST_DATABASE_URL"):
        assert re.match(rf"postgresql://[^@/]+@{alias}:5432/\w+$", job["variables"][var]), var
    script = script_text(job)
    junit = re.search(r"--junitxml[= ](\S+)", script)
    cobertura = re.search(r"--cov-report[= ]xml:(\S+)", script)
    assert junit and cobertura
    reports = job["artifacts"]["reports"]
    assert reports["junit"] == junit.group(1)
    assert reports["coverage_report"] == {"coverage_format": "cobertura", "path": cobertura.group(1)}
    assert job["artifacts"]["when"] == "always"
    assert re.search(job["coverage"].strip("/"), "TOTAL   1200    30    97.50%")


def test_image_built_once_with_build_metadata_and_three_tags() -> None:
    config = ci()
    builders = [n for n, j in jobs(config).items() if "buildx build" in script_text(resolved(config, n))]
    assert builders == ["build-image"]
    script = script_text(resolved(config, "build-image"))
    assert '--build-arg "BUILD_NUMBER=$CI_PIPELINE_IID"' in script
    assert '--build-arg "GIT_COMMIT=$CI_COMMIT_SHA"' in script
    assert '--build-arg "VERSION=$VERSION"' in script
    assert 'IMAGE_TAG="$(scripts/version.sh --oci "$CI_PIPELINE_IID")"' in script
    for tag in ("$IMAGE_TAG", "$CI_COMMIT_SHORT_SHA", "$CI_COMMIT_REF_SLUG"):
        assert f'--tag "$CI_REGISTRY_IMAGE:{tag}"' in script
    assert "--cache-from" in script and "--cache-to" in script and "--push" in script
    assert resolved(config, "build-image")["artifacts"]["reports"]["dotenv"] == "build.env"


def test_smoke_runs_the_stack_through_traefik_and_tears_down() -> None:
    job = resolved(ci(), "smoke")
    script = script_text(job)
    assert "docker compose up -d --wait" in script
    assert "https://localhost/" in script and "--insecure" in script
    assert "loadtest/locustfile.py" in script and "--headless" in script
    assert any("docker compose down --volumes" in line for line in job["after_script"])
    assert any("dind" in (s if isinstance(s, str) else s["name"]) or s["name"] == "$DIND_IMAGE"
               for s in job["services"])  # fmt: skip


def test_deploy_jobs_use_environments_ssh_and_the_repo_script() -> None:
    config = ci()
    for name, tier in (("deploy-staging", "staging"), ("deploy-production", "production")):
        job = resolved(config, name)
        env = job["environment"]
        assert env["name"] == tier and env["url"].startswith("https://") and env["deployment_tier"] == tier
        script = script_text(job)
        assert "./scripts/deploy.sh '$TALLY_IMAGE'" in script
        for var in ("SSH_PRIVATE_KEY", "DEPLOY_HOST", "DEPLOY_USER", "SSH_KNOWN_HOSTS"):
            assert f"${var}" in script or var in script
        assert "StrictHostKeyChecking=no" not in script
        assert job["resource_group"] == tier
    staging = resolved(config, "deploy-staging")
    assert all(rule.get("when", "on_success") != "manual" for rule in staging["rules"])
    production = resolved(config, "deploy-production")
    assert all(rule.get("when") == "manual" for rule in production["rules"])
    # A failed production deploy is a red pipeline, and both jobs check the page itself, not just /version.
    assert not production.get("allow_failure", False)
    for name in ("deploy-staging", "deploy-production"):
        script = script_text(resolved(config, name))
        assert '"$CI_ENVIRONMENT_URL/readyz"' in script and '"$CI_ENVIRONMENT_URL/"' in script
        assert 'grep -q "You have visited this page"' in script


SECRET_NAME = re.compile(r"(PASSWORD|TOKEN|SECRET|PRIVATE_KEY|API_KEY|DSN)", re.I)


def test_no_secret_values_in_the_file() -> None:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if SECRET_NAME.search(str(key)) and isinstance(value, str):
                    assert value.startswith("$"), f"{path}.{key} holds a literal value"
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")

    walk(ci(), "")
    text = CI_FILE.read_text()
    assert "BEGIN OPENSSH PRIVATE KEY" not in text and "BEGIN RSA PRIVATE KEY" not in text


def test_both_images_are_built_by_digest_and_scanned() -> None:
    config = ci()
    build = script_text(resolved(config, "build-image"))
    assert "TALLY_BACKUP_IMAGE=" in build and '"$CI_REGISTRY_IMAGE/backup:$IMAGE_TAG@$BACKUP_DIGEST"' in build
    scan = script_text(resolved(config, "container-scan"))
    for image in ("$TALLY_IMAGE", "$TALLY_BACKUP_IMAGE"):
        assert f'--exit-code 1 --severity HIGH,CRITICAL --ignore-unfixed "{image}"' in scan
