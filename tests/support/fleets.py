"""Fleets for tests: the example specs, pointed at a fake API."""

from __future__ import annotations

import dataclasses

from engine.model import Fleet
from engine.spec import load_spec


def example_fleet(name: str, endpoint: str | None = None) -> Fleet:
    """specs/<name>.yaml as a Fleet, talking to `endpoint` if given."""
    fleet = load_spec(f"specs/{name}.yaml")
    if endpoint is None:
        return fleet
    return dataclasses.replace(
        fleet, provider=dataclasses.replace(fleet.provider, endpoint=endpoint)
    )
