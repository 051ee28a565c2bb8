"""The app image, built by Docker from the unchanged Dockerfile, as compose runs it (read-only root, no
capabilities, secrets from the volume). Formerly tests/container's Podman smoke test; here the replicas are the
real ones behind Traefik, so only what the stack checks do not already show is checked."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.e2e.engine import BUILD_NUMBER, GIT_COMMIT, Stack, image_refs
from tests.stack.stackutil import REPO, render

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

MAX_IMAGE_BYTES = 400_000_000


def app_image() -> str:
    return image_refs()["app"]


def image_config(stack: Stack) -> dict[str, Any]:
    data: list[dict[str, Any]] = json.loads(stack.engine.docker("image", "inspect", app_image()).stdout)
    return data[0]


def in_replicas(stack: Stack, code: str, user: str | None = None) -> list[str]:
    """Runs python code in every app replica; its stdout per replica."""
    outputs = []
    for container in stack.container_ids("app"):
        args = ["exec", *(["--user", user] if user else []), container, "python", "-c", code]
        outputs.append(stack.engine.docker(*args).stdout)
    return outputs


def test_version_shows_build_args(stack: Stack) -> None:
    version = (REPO / "version.txt").read_text().strip()
    body = stack.visit("version-reader", "--path", "/version")["last_body"]
    assert json.loads(body) == {
        "version": f"{version}+build.{BUILD_NUMBER}",
        "semver": version,
        "build": BUILD_NUMBER,
        "commit": GIT_COMMIT,
    }


def test_metrics_port_serves_the_app_metrics(stack: Stack) -> None:
    # Multiprocess metrics live on the /tmp tmpfs: this fails if the read-only root reaches them.
    code = "import urllib.request as u; print(u.urlopen('http://127.0.0.1:9200/metrics', timeout=5).read().decode())"
    for body in in_replicas(stack, code):
        assert f'build="{BUILD_NUMBER}"' in body and "tally_app_info" in body, body[:2000]


def test_image_healthcheck_passes_in_every_replica(stack: Stack) -> None:
    test = image_config(stack)["Config"]["Healthcheck"]["Test"]
    assert test[0] == "CMD", test
    for container in stack.container_ids("app"):
        stack.engine.docker("exec", container, *test[1:])


PROCESSES = """
import json, os
procs = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        status = open(f"/proc/{pid}/status").read()
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
    except OSError:
        continue
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    procs[pid] = [uid, cmd]
print(json.dumps(procs))
"""


def test_runs_as_the_intended_unprivileged_user(stack: Stack) -> None:
    user = str(render()["services"]["app"].get("user") or image_config(stack)["Config"].get("User") or "")
    assert user, "neither compose nor the image names a user: the app would run as root"
    uid = user.split(":")[0]
    assert uid.isdigit() and uid != "0", user
    for output in in_replicas(stack, PROCESSES):
        procs = json.loads(output)
        # Every process, the gunicorn master and its workers, not just what `exec` gets.
        assert procs and all(owner == uid for owner, _ in procs.values()), procs
        # PID 1 receives compose's SIGTERM: gunicorn itself, not a shell, `flask run` or a reloader.
        pid1 = procs["1"][1]
        assert "gunicorn" in pid1 and not re.search(r"\bsh -c\b|flask run|--reload", pid1), pid1


def test_app_log_has_no_errors(stack: Stack) -> None:
    # Under a read-only root, anything that writes outside the tmpfs shows up here first.
    errors = [
        line
        for line in stack.logs("app").splitlines()
        if re.search(r"\[(ERROR|CRITICAL)\]|Traceback|\"level\": \"(ERROR|CRITICAL)\"", line)
    ]
    assert not errors, "\n".join(errors)


def test_root_filesystem_is_read_only(stack: Stack) -> None:
    # As uid 0, which owns / : only a read-only mount stops the write (the app user never could).
    for container in stack.container_ids("app"):
        result = stack.engine.docker("exec", "--user", "0", container, "touch", "/e2e-write-probe", check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr, result


# Names that must never reach an image: VCS data, local env files (real secrets), host venvs, dev databases and
# caches; in the app directory, tests and local state; apt lists and packages; compilers.
SCAN = r"""
import json, os, re, sys
anywhere = re.compile(
    r"(^|/)(\.git|\.env[^/]*|\.venv|node_modules|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.cache/pip)$"
)
in_app = re.compile(r"^(tests|instance|secrets|\.tools|htmlcov|\.coverage|\.terraform)$")
workdir = sys.argv[1]
ls = lambda d: os.listdir(d) if os.path.isdir(d) else []
offenders = []
for directory, dirnames, filenames in os.walk("/"):
    if directory == "/":
        dirnames[:] = [d for d in dirnames if d not in ("proc", "sys", "dev")]
    for name in dirnames + filenames:
        path = os.path.join(directory, name)
        if anywhere.search(path):
            offenders.append(path)
offenders += [f"{workdir}/{n}" for n in os.listdir(workdir) if in_app.match(n)]
offenders += [f"/var/cache/apt/archives/{n}" for n in ls("/var/cache/apt/archives") if n.endswith(".deb")]
offenders += [f"/var/lib/apt/lists/{n}" for n in ls("/var/lib/apt/lists") if "_Packages" in n]
offenders += [f"/usr/bin/{c}" for c in ("gcc", "cc", "c++", "g++", "x86_64-linux-gnu-gcc", "clang", "make")
              if os.path.exists(f"/usr/bin/{c}")]
print(json.dumps({"offenders": sorted(offenders), "app": os.path.isdir(f"{workdir}/app")}))
"""


def test_image_holds_no_dev_files_caches_or_compilers(stack: Stack) -> None:
    workdir = image_config(stack)["Config"]["WorkingDir"]
    out = stack.engine.docker(
        "run", "--rm", "--network", "none", "--entrypoint", "python", app_image(), "-c", SCAN, workdir
    ).stdout
    result = json.loads(out)
    assert result["app"], f"app not in {workdir}"
    assert not result["offenders"], f"found in the image: {result['offenders']}"


def test_image_size_is_reported_and_bounded(stack: Stack) -> None:
    size = int(image_config(stack)["Size"])
    print(f"\nimage size: {size / 1e6:.0f} MB (stand-in base; the official python slim base is smaller)")
    assert size < MAX_IMAGE_BYTES, f"image is {size / 1e6:.0f} MB, bound {MAX_IMAGE_BYTES / 1e6:.0f} MB"
