"""Fixtures shared by the whole suite."""

from tests.support.postgres import postgres

__all__ = ["postgres"]
