"""A fresh store on each backend (SQLite and a real PostgreSQL), on the test's clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.state.store import Store, open_store
from tests.support.clock import Clock
from tests.support.postgres import Cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.create_database()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[Store]:
    with open_store(url, now=clock) as opened:
        yield opened
