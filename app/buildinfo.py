"""What build is running: read once at start, shown on ``/`` and ``/version`` and in metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .config import Config

VERSION_FILE = Path(__file__).resolve().parent.parent / "version.txt"
SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?$")


class VersionFileError(RuntimeError):
    pass


@dataclass(frozen=True)
class BuildInfo:
    semver: str
    build: str | None
    commit: str | None

    @property
    def version(self) -> str:
        return f"{self.semver}+build.{self.build}" if self.build else self.semver

    def as_dict(self) -> dict[str, str | None]:
        return {"version": self.version, "semver": self.semver, "build": self.build, "commit": self.commit}


def load_build_info(config: Config, version_file: Path = VERSION_FILE) -> BuildInfo:
    try:
        semver = version_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise VersionFileError(f"cannot read {version_file}: {exc.strerror}") from None
    if not SEMVER.match(semver):
        raise VersionFileError(f"{version_file} must hold a semantic version like 1.2.3, got {semver!r}")
    return BuildInfo(semver=semver, build=config.build_number, commit=config.git_commit)
