"""The state-store tests run on both backends: a SQLite file and a real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.postgres import Cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store URL on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'nested' / 'state.db'}"
    cluster: Cluster = request.getfixturevalue("postgres")
    return cluster.create_database()
