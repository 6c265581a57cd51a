"""The commands the README prints, read from the README itself, so tests run what users read."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent.parent / "README.md"


def readme_command(containing: str, readme: Path = README) -> str:
    """The first command line of the README's code blocks that contains `containing`
    (a `$ ` prompt removed; comments skipped)."""
    text = readme.read_text(encoding="utf-8")
    for block in re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if containing in line and not line.startswith("#"):
                return line
    raise AssertionError(f"{readme.name} has no command containing {containing!r}")


def console_example(section: str, readme: Path = README) -> tuple[str, str]:
    """The command (without `$ `) and the output of the first console block under the
    README's `## section`."""
    after = readme.read_text(encoding="utf-8").split(f"\n## {section}\n", 1)[1]
    block = re.search(r"```console\n(.*?)```", after, re.DOTALL)
    assert block, f"no console block under {section}"
    command, _, output = block.group(1).partition("\n")
    assert command.startswith("$ "), command
    return command.removeprefix("$ "), output
