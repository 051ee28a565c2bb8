"""One running stack for the whole e2e session (building images and `up` are the expensive part)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.engine import Stack, running_stack


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack() as running:
        yield running
