"""Which environment variables the app reads, observed by running its configuration loader."""

from __future__ import annotations

from typing import Any

from app.config import load_config


class _RecordingEnviron(dict[str, str]):
    """An environment that remembers every name looked up in it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def app_env_vars() -> set[str]:
    """Every variable ``load_config`` reads (a secret NAME and its NAME_FILE form both count).

    A PostgreSQL URL so that the branch reading DATABASE_PASSWORD runs too; development, so that the
    missing secrets are not an error.
    """
    environ = _RecordingEnviron({"TALLY_ENV": "development", "DATABASE_URL": "postgresql://tally@db:5432/tally"})
    load_config(environ)
    return environ.read
