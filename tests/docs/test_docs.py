"""The docs are part of the product: links resolve, commands exist, the configuration table matches
the code, and every Mermaid diagram parses and has a rendered copy for viewers without Mermaid."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.support.gunicorn import REPO_ROOT

SKIP_DIRS = {".venv", ".tools", "node_modules", ".git", ".terraform", ".pytest_cache", "results"}
MARKDOWN = sorted(
    path for path in REPO_ROOT.rglob("*.md") if not SKIP_DIRS.intersection(path.relative_to(REPO_ROOT).parts)
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
MAKE_TARGET = re.compile(r"(?:^|[\s;&|(])make\s+([a-z][a-z0-9-]*)")
SCRIPT = re.compile(r"(?:\./)?((?:scripts|drills|bench|loadtest|backup/bin|tests/e2e)/[\w./-]+\.(?:sh|py))")
DIAGRAMS = REPO_ROOT / "docs" / "diagrams"
MMDC = REPO_ROOT / ".tools" / "node" / "node_modules" / ".bin" / "mmdc"


def _id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def mermaid_blocks() -> list[tuple[str, str]]:
    """(name, source) for every Mermaid block; the name is the file's stem plus the block's position."""
    blocks = []
    for path in MARKDOWN:
        sources = [body for lang, body in CODE_BLOCK.findall(path.read_text()) if lang == "mermaid"]
        stem = _id(path).removesuffix(".md").replace("/", "-")
        blocks += [(f"{stem}-{number}", source) for number, source in enumerate(sources, start=1)]
    return blocks


def test_there_are_docs_to_check() -> None:
    names = {_id(path) for path in MARKDOWN}
    assert {"README.md", "docs/architecture.md", "docs/stack.md"} <= names


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_relative_links_resolve(path: Path) -> None:
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        file_part = target.split("#", 1)[0]
        if file_part and not (path.parent / file_part).exists():
            broken.append(target)
    assert not broken, f"{_id(path)} links to missing files: {broken}"


@pytest.mark.parametrize("path", MARKDOWN, ids=_id)
def test_commands_in_code_blocks_exist(path: Path) -> None:
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    missing = []
    for _lang, body in CODE_BLOCK.findall(path.read_text()):
        missing += [f"make {t}" for t in MAKE_TARGET.findall(body) if t not in targets]
        missing += [s for s in SCRIPT.findall(body) if not (REPO_ROOT / s).exists()]
    assert not missing, f"{_id(path)} names commands that do not exist: {missing}"


def test_configuration_table_matches_the_code() -> None:
    code = (REPO_ROOT / "app" / "config.py").read_text()
    read_by_code = set(re.findall(r'(?:env\.\w+\(|_optional_token\(env,)\s*"([A-Z][A-Z0-9_]+)"', code))
    readme = (REPO_ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", table, re.M))
    assert read_by_code, "no environment variables found in app/config.py"
    assert documented == read_by_code


def test_every_diagram_has_a_rendered_copy() -> None:
    blocks = mermaid_blocks()
    assert len(blocks) >= 2, "README and docs/architecture.md carry Mermaid diagrams"
    for name, source in blocks:
        kept = DIAGRAMS / f"{name}.mmd"
        assert kept.exists() and (DIAGRAMS / f"{name}.svg").exists(), f"run scripts/render-diagrams.sh ({name})"
        assert kept.read_text() == source, f"{name}.svg is stale: run scripts/render-diagrams.sh"


@pytest.mark.slow
def test_every_diagram_parses(tmp_path: Path) -> None:
    assert MMDC.exists(), "mermaid-cli missing: make deps"
    config = REPO_ROOT / "scripts" / "puppeteer.json"
    for name, source in mermaid_blocks():
        source_file = tmp_path / f"{name}.mmd"
        source_file.write_text(source)
        result = subprocess.run(
            [str(MMDC), "--quiet", "-p", str(config), "-i", str(source_file), "-o", str(tmp_path / f"{name}.svg")],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
        assert "Syntax error" not in (tmp_path / f"{name}.svg").read_text(), name
