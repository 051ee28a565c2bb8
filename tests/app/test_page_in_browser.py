"""The page as a person sees it: real Chromium against the real server."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.support.gunicorn import base_env, migrate, run_gunicorn

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
)


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is not installed (apt install chromium)"
    return found


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.slow
def test_page_renders_the_visit_line(pg_database: str, tmp_path: Path) -> None:
    assert migrate(pg_database, tmp_path).returncode == 0
    env = base_env(pg_database, tmp_path, USER_NAME="Tally Ops", USER_URL="https://example.org/", BUILD_NUMBER="1")
    server = run_gunicorn(env, tmp_path / "gunicorn.log")
    try:
        profile = tmp_path / "chromium-profile"
        common = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", server.url + "/"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert "You have visited this page" in dom
        assert 'id="total-visitors">1<' in dom
        assert "Deployed by" in dom
        assert "Tally Ops" in dom
        screenshot = tmp_path / "page.png"
        subprocess.run(
            [*common, f"--screenshot={screenshot}", "--window-size=1024,640", server.url + "/"],
            capture_output=True,
            timeout=60,
            check=True,
        )
        assert png_size(screenshot) == (1024, 640)
        # A page that failed to load (blank or error) compresses to almost nothing.
        assert screenshot.stat().st_size > 15_000
        assert server.log().count('"message": "database unavailable"') == 0
    finally:
        server.stop()
