"""A duration the spec refuses says what a duration may be, not only that it is malformed."""

from __future__ import annotations

import pytest

from engine.errors import SpecError
from engine.spec import parse_spec

LOCAL = """apiVersion: fleet/v1
kind: Fleet
name: first
provider: {name: local}
groups: [{name: web, count: 1}]
"""


@pytest.mark.parametrize("value", ["0s", "9999999h", "15 seconds", "-5m"])
def test_a_duration_out_of_its_range_or_form_is_told_the_range(value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(f"{LOCAL}install: {{agent: {{heartbeat: '{value}'}}}}\n".encode())
    (found,) = info.value.diagnostics
    assert (found.code, found.path) == ("invalid_format", "install.agent.heartbeat")
    assert (
        found.hint
        == "write a whole number from 1 to 999999 followed by s, m or h, e.g. 30s, 10m, 1h"
    )
