from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from app.buildinfo import VersionFileError, load_build_info
from harness.flask_app import make_config

SQLITE = "sqlite:///:memory:"


def test_version_file_must_hold_semver(tmp_path: Path) -> None:
    bad = tmp_path / "version.txt"
    bad.write_text("v1\n")
    with pytest.raises(VersionFileError, match="semantic version"):
        load_build_info(make_config(SQLITE), bad)
    with pytest.raises(VersionFileError, match="cannot read"):
        load_build_info(make_config(SQLITE), tmp_path / "missing.txt")


def test_shipped_version_file_is_semver() -> None:
    info = load_build_info(make_config(SQLITE, BUILD_NUMBER="3", GIT_COMMIT="abc"))
    assert info.version == f"{info.semver}+build.3"


def test_debugger_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(SystemExit, match="refusing to start with the Flask debugger"):
        create_app(make_config(SQLITE))


def test_broken_version_file_stops_the_app(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bad = tmp_path / "version.txt"
    bad.write_text("latest")
    monkeypatch.setattr("app.load_build_info", lambda config: load_build_info(config, bad))
    with pytest.raises(SystemExit, match="must hold a semantic version"):
        create_app(make_config(SQLITE))
