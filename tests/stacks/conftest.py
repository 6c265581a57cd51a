"""Each provider's test module declares its SPEC and ANSWERS; these run its program once."""

from __future__ import annotations

import pytest

from stacks.inputs import StackInputs
from tests.stacks.harness import Run, fleet_from, run_program, stack_inputs


@pytest.fixture(scope="module")
def inputs(request: pytest.FixtureRequest) -> StackInputs:
    return stack_inputs(fleet_from(request.module.SPEC))


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest, inputs: StackInputs) -> Run:
    return run_program(inputs, request.module.ANSWERS)
