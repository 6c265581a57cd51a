"""The README's validation example is what `engine validate` really prints."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from tests.support.cli import ROOT, engine


def _example(section: str) -> tuple[list[str], str]:
    """The command and the output of the first console block under the README's `section`."""
    readme = (ROOT / "README.md").read_text()
    after = readme.split(f"\n## {section}\n", 1)[1]
    block = re.search(r"```console\n(.*?)```", after, re.DOTALL)
    assert block, f"no console block under {section}"
    command, _, output = block.group(1).partition("\n")
    assert command.startswith("$ engine ")
    return shlex.split(command.removeprefix("$ engine ")), output


def test_the_validation_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    args, output = _example("Validation")
    # A private state directory: a catalog refreshed in the checkout must not change the answer.
    result = engine(*args, cwd=ROOT, env={"ENGINE_STATE_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert result.stdout == output
    assert result.stderr == ""
