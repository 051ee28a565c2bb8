"""The Markdown docs as data: every file, its code blocks, its Mermaid diagrams (tests/docs checks them,
scripts/render-diagrams.sh renders the diagrams)."""

from __future__ import annotations

import re
from pathlib import Path

from . import REPO_ROOT

SKIP_DIRS = {".venv", ".tools", "node_modules", ".git", ".terraform", ".pytest_cache", "results"}
MARKDOWN = sorted(
    path for path in REPO_ROOT.rglob("*.md") if not SKIP_DIRS.intersection(path.relative_to(REPO_ROOT).parts)
)
CODE_BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)
DIAGRAMS = REPO_ROOT / "docs" / "diagrams"


def doc_name(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def mermaid_blocks() -> list[tuple[str, str]]:
    """(name, source) for every Mermaid block; the name is the file's stem plus the block's position."""
    blocks = []
    for path in MARKDOWN:
        sources = [body for lang, body in CODE_BLOCK.findall(path.read_text()) if lang == "mermaid"]
        stem = doc_name(path).removesuffix(".md").replace("/", "-")
        blocks += [(f"{stem}-{number}", source) for number, source in enumerate(sources, start=1)]
    return blocks
