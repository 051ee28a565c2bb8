"""What the factory builds once and the views use on every request."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from sqlalchemy import Engine

from .buildinfo import BuildInfo
from .config import Config
from .metrics import AppMetrics
from .page import VisitPage

EXTENSION_NAME = "tally"


@dataclass(frozen=True)
class Tally:
    config: Config
    build: BuildInfo
    metrics: AppMetrics
    engine: Engine
    head_revision: str
    known_revisions: frozenset[str]
    visit_page: VisitPage

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION_NAME] = self


def tally() -> Tally:
    state: Tally = current_app.extensions[EXTENSION_NAME]
    return state
