"""Fixtures shared by the whole suite."""

from tests.support.postgres import postgres

pytest_plugins = ["tests.support.docker"]

__all__ = ["postgres"]
