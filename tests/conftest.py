"""Fixtures shared by the whole suite."""

import pytest

from tests.support.clock import Clock
from tests.support.postgres import postgres

pytest_plugins = ["tests.support.docker"]

__all__ = ["clock", "postgres"]


@pytest.fixture
def clock() -> Clock:
    """A clock standing still until the test advances it."""
    return Clock()
