"""Finding the tools the tests, the benchmark and the drills run: found, or a failure that says how to install it.

A missing tool is a failure, never a skip: the suite's contract is that it runs everything it has.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

INSTALL_DEPS = "scripts/install-test-deps.sh"


class MissingTool(AssertionError):
    """A tool is not installed; the message names the command that installs it."""


def _executable(path: Path | str | None) -> bool:
    return path is not None and Path(path).is_file() and os.access(path, os.X_OK)


def require_tool(path: Path | str | None, name: str, install: str = INSTALL_DEPS) -> str:
    """``path`` when it is an executable file, else :class:`MissingTool`."""
    if not _executable(path):
        raise MissingTool(f"{name} not found (looked at {path}); install it: {install}")
    return str(path)


def find_tool(name: str, install: str = INSTALL_DEPS, *candidates: Path | str) -> str:
    """The first executable of ``candidates``, else ``name`` next to this interpreter (the venv's pip-installed
    tools), else on PATH. An absolute ``name`` is looked at and nowhere else."""
    if os.path.isabs(name):
        return require_tool(name, Path(name).name, install)
    for candidate in (*candidates, Path(sys.executable).parent / name):
        if _executable(candidate):
            return str(candidate)
    return require_tool(shutil.which(name), name, install)
