""".gitlab-ci.yml: schema, pipeline shape per ref type, and the jobs that can really run here.

- Schema: GitLab's CI schema as vendored by check-jsonschema (offline).
- Whether a pipeline is created at all (`workflow:rules`) and which jobs run for a merge request, a feature
  branch, the default branch and a release tag: gitlab-ci-local evaluates the rules itself (`--list-csv`
  with predefined variables overridden). It does not apply `workflow:rules`, so those are handed to it as
  the rules of a probe job (see `workflow_probe`): no rule evaluator of ours.
- Structure of the jobs (services, reports, tags, environments): gitlab-ci-local's `--preview`, i.e. the
  jobs with `extends:` merged the way GitLab merges them.
- Execution: gitlab-ci-local `--force-shell-executor` runs `version`, `yamllint` and `shellcheck` on a
  snapshot of the working tree. Only these: they call tools that exist on this machine (yamllint from
  .venv, Debian's shellcheck, POSIX sh). The other lint jobs need their container image's tooling
  (terraform providers from the registry, node for dclint, prom/* images) or Docker itself (build, smoke,
  deploy), which this machine does not have; they are covered by the schema and the structure tests here.

Everything that starts gitlab-ci-local (node, seconds per call) is marked slow.
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

from harness import REPO_ROOT

CI_FILE = REPO_ROOT / ".gitlab-ci.yml"
VENV_BIN = REPO_ROOT / ".venv" / "bin"
GCL = REPO_ROOT / ".tools" / "node" / "node_modules" / ".bin" / "gitlab-ci-local"

LINT_TEST_STAGES = {"lint", "test"}


def ci() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CI_FILE.read_text())
    return data


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


# --------------------------------------------------------------------------------- gitlab-ci-local


def gitlab_ci_local() -> str:
    assert GCL.exists(), (
        f"{GCL} missing: npm --prefix {REPO_ROOT / '.tools/node'} install --save-exact gitlab-ci-local@4.64.1"
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
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO_ROOT / rel
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
# A release tag names the version it ships (the `version` job enforces it).
TAG_VARS = (
    "--variable",
    f"CI_COMMIT_TAG=v{(REPO_ROOT / 'version.txt').read_text().strip()}",
    "--unset-variable",
    "CI_COMMIT_BRANCH",
)
FEATURE_VARS = ("--variable", "CI_COMMIT_BRANCH=feature/x")
FEATURE_WITH_MR_VARS = (*FEATURE_VARS, "--variable", "CI_OPEN_MERGE_REQUESTS=tally/tally!4")


# ------------------------------------------------------------------------------------- workflow:rules


@pytest.fixture(scope="module")
def workflow_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-job pipeline whose job carries the pipeline's own `workflow:rules` as its `rules:`.

    gitlab-ci-local applies job rules but not workflow rules. GitLab evaluates both the same way (the
    first matching `if` decides, `when: never` drops), so the probe job is listed exactly when GitLab
    would create the pipeline, and gitlab-ci-local's evaluator judges the rules, not code of ours.
    """
    dest = tmp_path_factory.mktemp("workflow-probe")
    probe = {
        "stages": ["test"],
        "workflow-probe": {"stage": "test", "script": ["true"], "rules": ci()["workflow"]["rules"]},
    }
    (dest / ".gitlab-ci.yml").write_text(yaml.safe_dump(probe))
    git = ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "probe", "--no-verify"], cwd=dest, check=True)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variables", "created"),
    [
        (MR_VARS, True),
        ((), True),
        (TAG_VARS, True),
        (FEATURE_VARS, True),
        # The branch pipeline duplicate of an MR pipeline must not be created.
        (FEATURE_WITH_MR_VARS, False),
    ],
    ids=["mr", "main", "tag", "feature-without-mr", "feature-with-open-mr"],
)
def test_workflow_rules_avoid_duplicate_pipelines(
    workflow_probe: Path, variables: tuple[str, ...], created: bool
) -> None:
    assert ("workflow-probe" in listed_jobs(workflow_probe, *variables)) is created


@pytest.mark.slow
def test_merge_requests_run_lint_and_test_only(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, *MR_VARS)
    assert {row["stage"] for row in listed.values()} == LINT_TEST_STAGES
    assert {"pytest", "ruff", "mypy", "hadolint", "shellcheck", "yamllint", "terraform"} <= set(listed)


@pytest.mark.slow
def test_feature_branch_runs_lint_and_test_only(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, "--variable", "CI_COMMIT_BRANCH=feature/x")
    assert {row["stage"] for row in listed.values()} == LINT_TEST_STAGES


@pytest.mark.slow
def test_default_branch_builds_scans_smokes_and_deploys(snapshot: Path) -> None:
    listed = listed_jobs(snapshot)
    assert list(ci()["stages"]) == ["lint", "test", "build", "scan", "smoke", "deploy"]
    assert {row["stage"] for row in listed.values()} == set(ci()["stages"])
    assert listed["deploy-staging"]["when"] == "on_success"
    assert listed["deploy-production"]["when"] == "manual"
    for name in ("build-image", "container-scan", "dependency-scan", "smoke"):
        assert listed[name]["when"] == "on_success", name


@pytest.mark.slow
def test_tags_deploy_production_manually_and_never_staging(snapshot: Path) -> None:
    listed = listed_jobs(snapshot, *TAG_VARS)
    assert "deploy-staging" not in listed
    assert listed["deploy-production"]["when"] == "manual"
    assert "build-image" in listed and "smoke" in listed


@pytest.mark.slow
def test_jobs_run_locally_in_shell_mode(snapshot: Path) -> None:
    proc = gcl(snapshot, "--force-shell-executor", "version", "yamllint", "shellcheck")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for job in ("version", "yamllint", "shellcheck"):
        assert re.search(rf"PASS\s+{job}\b", out), f"{job} did not pass:\n{out}"
    # The shellcheck job really looked at the deploy script, and the version job printed both forms.
    assert "./scripts/deploy.sh" in out
    assert re.search(r"\b\d+\.\d+\.\d+\+build\.\d+\b", out) and re.search(r"\b\d+\.\d+\.\d+-build\.\d+\b", out)


@pytest.mark.slow
def test_local_jobs_fail_on_bad_input(tmp_path: Path) -> None:
    # A minimal tree (the pipeline file, lint config, version files) plus one broken shell script and one
    # broken YAML file: each local job must fail on it, so a PASS above means something.
    tree = tmp_path / "broken"
    for rel in (".gitlab-ci.yml", ".yamllint.yaml", ".gitignore", "version.txt", "scripts/version.sh"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, tree / rel)
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
# Jobs as GitLab sees them: gitlab-ci-local's --preview (`extends:` merged, `!reference` resolved).


@pytest.fixture(scope="module")
def preview(snapshot: Path) -> dict[str, Any]:
    proc = gcl(snapshot, "--preview")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data: dict[str, Any] = yaml.safe_load(proc.stdout)
    return data


def jobs(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    reserved = {"workflow", "stages", "variables", "default", "include", "image", "services", "cache"}
    return {k: v for k, v in pipeline.items() if not k.startswith(".") and k not in reserved}


@pytest.mark.slow
def test_pytest_job_uses_postgres_service_and_publishes_reports(preview: dict[str, Any]) -> None:
    job = preview["pytest"]
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


@pytest.mark.slow
def test_image_built_once_with_build_metadata_and_three_tags(preview: dict[str, Any]) -> None:
    builders = [name for name, job in jobs(preview).items() if "buildx build" in script_text(job)]
    assert builders == ["build-image"]
    script = script_text(preview["build-image"])
    assert '--build-arg "BUILD_NUMBER=$CI_PIPELINE_IID"' in script
    assert '--build-arg "GIT_COMMIT=$CI_COMMIT_SHA"' in script
    assert '--build-arg "VERSION=$VERSION"' in script
    # Both images (app and backup) name the repository they were built from.
    assert script.count('--build-arg "SOURCE_URL=$CI_PROJECT_URL"') == 2
    assert 'IMAGE_TAG="$(scripts/version.sh --oci "$CI_PIPELINE_IID")"' in script
    for tag in ("$IMAGE_TAG", "$CI_COMMIT_SHORT_SHA", "$CI_COMMIT_REF_SLUG"):
        assert f'--tag "$CI_REGISTRY_IMAGE:{tag}"' in script
    assert "--cache-from" in script and "--cache-to" in script and "--push" in script
    assert preview["build-image"]["artifacts"]["reports"]["dotenv"] == "build.env"


@pytest.mark.slow
def test_smoke_runs_the_stack_through_traefik_and_tears_down(preview: dict[str, Any]) -> None:
    job = preview["smoke"]
    script = script_text(job)
    assert "docker compose up -d --wait" in script
    assert "https://localhost/" in script and "--insecure" in script
    assert "loadtest/locustfile.py" in script and "--headless" in script
    assert any("docker compose down --volumes" in line for line in job["after_script"])
    assert any("dind" in (s if isinstance(s, str) else s["name"]) or s["name"] == "$DIND_IMAGE"
               for s in job["services"])  # fmt: skip


@pytest.mark.slow
def test_deploy_jobs_use_environments_ssh_and_the_repo_script(preview: dict[str, Any]) -> None:
    for name, tier in (("deploy-staging", "staging"), ("deploy-production", "production")):
        job = preview[name]
        env = job["environment"]
        assert env["name"] == tier and env["url"].startswith("https://") and env["deployment_tier"] == tier
        script = script_text(job)
        assert "./scripts/deploy.sh '$TALLY_IMAGE'" in script
        # The default runbook links (RUNBOOK_BASE_URL=.) are paths in the shipped project.
        assert "version.txt docs/runbooks;" in script
        for var in ("SSH_PRIVATE_KEY", "DEPLOY_HOST", "DEPLOY_USER", "SSH_KNOWN_HOSTS"):
            assert f"${var}" in script or var in script
        assert "StrictHostKeyChecking=no" not in script
        assert job["resource_group"] == tier
    staging = preview["deploy-staging"]
    assert all(rule.get("when", "on_success") != "manual" for rule in staging["rules"])
    production = preview["deploy-production"]
    assert all(rule.get("when") == "manual" for rule in production["rules"])
    # A failed production deploy is a red pipeline, and both jobs check the page itself, not just /version.
    assert not production.get("allow_failure", False)
    for name in ("deploy-staging", "deploy-production"):
        script = script_text(preview[name])
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


@pytest.mark.slow
def test_both_images_are_built_by_digest_and_scanned(preview: dict[str, Any]) -> None:
    build = script_text(preview["build-image"])
    assert "TALLY_BACKUP_IMAGE=" in build and '"$CI_REGISTRY_IMAGE/backup:$IMAGE_TAG@$BACKUP_DIGEST"' in build
    scan = script_text(preview["container-scan"])
    for image in ("$TALLY_IMAGE", "$TALLY_BACKUP_IMAGE"):
        assert f'--exit-code 1 --severity HIGH,CRITICAL --ignore-unfixed "{image}"' in scan
