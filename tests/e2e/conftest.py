"""One engine and one running stack for the whole e2e session (building images and `up` are the expensive
part). The swarm tests (test_9_swarm.py, last) share the engine and remove the compose stack first."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.engine import Engine, Stack, running_engine, running_stack


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    with running_engine() as running:
        yield running


@pytest.fixture(scope="session")
def stack(engine: Engine) -> Iterator[Stack]:
    with running_stack(engine) as running:
        yield running
