"""The pages as a person sees them: real Chromium against the real server.

``TALLY_UPDATE_SCREENSHOTS=1`` also copies the screenshots to docs/ (the README shows them).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from app.counting import record_visit, utc_today
from harness import REPO_ROOT
from harness.gunicorn import Gunicorn, base_env, migrate, run_gunicorn
from harness.tools import find_tool

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


def keep_for_docs(screenshot: Path, name: str) -> None:
    if os.environ.get("TALLY_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(screenshot, REPO_ROOT / "docs" / name)


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@dataclass
class Browser:
    """Headless Chromium against one real gunicorn (production config, PostgreSQL)."""

    server: Gunicorn
    command: list[str]

    def dom(self, path: str) -> str:
        argv = [*self.command, "--dump-dom", self.server.url + path]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout

    def screenshot(self, path: str, file: Path, size: tuple[int, int]) -> None:
        argv = [*self.command, f"--screenshot={file}", f"--window-size={size[0]},{size[1]}", self.server.url + path]
        subprocess.run(argv, capture_output=True, timeout=60, check=True)
        assert png_size(file) == size
        # A page that failed to load (blank or error) compresses to almost nothing.
        assert file.stat().st_size > 15_000, file.name
        keep_for_docs(file, file.name)


@contextmanager
def browser(pg_database: str, tmp_path: Path) -> Iterator[Browser]:
    env = base_env(pg_database, tmp_path, USER_NAME="Tally Ops", USER_URL="https://example.org/", BUILD_NUMBER="1")
    server = run_gunicorn(env, tmp_path / "gunicorn.log")
    try:
        yield Browser(
            server,
            [
                find_tool("chromium", "apt install chromium"),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={tmp_path / 'chromium-profile'}",
            ],
        )
        assert server.log().count('"message": "database unavailable"') == 0
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.slow
def test_page_renders_the_visit_line(pg_database: str, tmp_path: Path) -> None:
    assert migrate(pg_database, tmp_path).returncode == 0
    with browser(pg_database, tmp_path) as chromium_:
        dom = chromium_.dom("/")
        assert "You have visited this page" in dom
        assert 'id="total-visitors">1<' in dom
        assert "Deployed by" in dom
        assert "Tally Ops" in dom
        chromium_.screenshot("/", tmp_path / "screenshot.png", (1024, 640))


@pytest.mark.slow
def test_statistics_page_renders_the_chart(pg_database: str, tmp_path: Path) -> None:
    assert migrate(pg_database, tmp_path).returncode == 0
    engine = create_engine(pg_database)
    today = utc_today()
    try:
        # A plausible month: weekdays busier than weekends, one busy day.
        for days_ago in range(30):
            day = today - dt.timedelta(days=days_ago)
            visitors = 2 + (days_ago * 7) % 5 + (0 if day.weekday() >= 5 else 4) + (9 if days_ago == 12 else 0)
            for number in range(visitors):
                record_visit(engine, f"{days_ago}-{number}".encode(), day)
    finally:
        engine.dispose()
    with browser(pg_database, tmp_path) as chromium_:
        dom = chromium_.dom("/stats")
        assert dom.count('<rect class="bar"') == 30
        assert "Unique visitors per day" in dom
        chromium_.screenshot("/stats", tmp_path / "stats.png", (1024, 900))
        chromium_.screenshot("/stats", tmp_path / "stats-phone.png", (390, 844))
