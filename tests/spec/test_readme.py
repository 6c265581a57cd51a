"""The README's validation example is what `engine validate` really prints."""

from __future__ import annotations

import shlex
from pathlib import Path

from tests.support.cli import ROOT, engine
from tests.support.readme import console_example


def test_the_validation_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    command, output = console_example("Validation")
    args = shlex.split(command.removeprefix("engine "))
    # A private state directory: a catalog refreshed in the checkout must not change the answer.
    result = engine(*args, cwd=ROOT, env={"ENGINE_STATE_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stdout == output
    assert result.stderr == ""
