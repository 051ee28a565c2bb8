"""The app in this process (no server): a production configuration and a migrated ``create_app``."""

from __future__ import annotations

from flask import Flask

from app import create_app
from app.config import Config, load_config

from .gunicorn import TEST_SECRET_KEY


def make_config(database_url: str, **overrides: str) -> Config:
    environ = {"TALLY_ENV": "production", "DATABASE_URL": database_url, "SECRET_KEY": TEST_SECRET_KEY} | overrides
    return load_config(environ)


def migrated_app(config: Config) -> Flask:
    from flask_migrate import upgrade

    app = create_app(config)
    with app.app_context():
        upgrade()
    return app
