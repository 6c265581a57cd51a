"""A fresh store on each backend (SQLite and a real PostgreSQL), with a clock the test moves."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.state.store import Store, open_store
from tests.support.postgres import Cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'state.db'}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.create_database()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 11, 5, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[Store]:
    with open_store(url, now=clock) as opened:
        yield opened
