"""The commands and examples the README prints, read from the README itself, so tests run what
users read and compare what the engine prints with what the README shows."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent.parent / "README.md"

# A number the README made up (a time, a percentage, a count): one not glued to a word, a
# version or an address, such as the 1 of web-1, the 12 of debian-12 or the 22 of cx22.
_NUMBER = r"(?<![\w.:-])\d+(?:\.\d+)?"
_PIECE = re.compile(rf"(?P<number>{_NUMBER})|(?P<space>\s+)|(?P<elided>…)|(?P<text>.)")


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


def section(title: str, readme: Path = README) -> str:
    """The text of the README's `## title` section, up to the next one."""
    text = readme.read_text(encoding="utf-8")
    assert f"\n## {title}\n" in text, f"{readme.name} has no section {title!r}"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def console_example(title: str, readme: Path = README) -> tuple[str, str]:
    """The command and the output of the first console block under the README's `## title`.

    The command is the block's last `$ ` line, without the prompt and a trailing `# comment`
    (earlier `$ ` lines, such as an `export`, set the scene); the output is what follows it.
    A block without a prompt is all output, and its command is ''.
    """
    block = re.search(r"```console\n(.*?)```", section(title, readme), re.DOTALL)
    assert block, f"no console block under {title}"
    lines = block.group(1).splitlines()
    prompts = [n for n, line in enumerate(lines) if line.startswith("$ ")]
    if not prompts:
        return "", "\n".join(lines) + "\n"
    command = re.sub(r"\s+#.*$", "", lines[prompts[-1]].removeprefix("$ "))
    output = lines[prompts[-1] + 1 :]
    return command, "".join(f"{line}\n" for line in output)


def _line_pattern(line: str, *, any_number: bool) -> re.Pattern[str]:
    parts = []
    for piece in _PIECE.finditer(line.rstrip()):
        if piece["number"] and any_number:
            parts.append(_NUMBER)
        elif piece["space"] and any_number:
            parts.append(r"\s+")  # a wider number moves the columns after it
        elif piece["elided"]:
            parts.append(r"\S*")
        else:
            parts.append(re.escape(piece[0]))
    return re.compile("".join(parts))


def assert_shaped_like(example: str, actual: str, *, any_number: bool = False) -> None:
    """Fail unless `actual` has the lines of the README's `example`, in order.

    A line `...` in the example stands for any number of lines, `…` for a word cut short. With
    `any_number`, a number in the example (a time, a count) stands for any number, so the
    example and the output agree in lines, words and columns but not in figures.
    """
    wanted = example.rstrip("\n").splitlines()
    got = [line.rstrip() for line in actual.rstrip("\n").splitlines()]
    patterns = [
        None if line.strip() == "..." else _line_pattern(line, any_number=any_number)
        for line in wanted
    ]
    # reach[i] holds the lines of `got` after which the first i example lines can end.
    reach: list[set[int]] = [{0}]
    for pattern in patterns:
        ends: set[int] = set()
        for start in sorted(reach[-1]):
            if pattern is None:
                ends.update(range(start, len(got) + 1))
            elif start < len(got) and pattern.fullmatch(got[start]):
                ends.add(start + 1)
        if not ends:
            missing = wanted[len(reach) - 1]
            raise AssertionError(
                f"the README's line {missing!r} is not where the engine's output has it; "
                f"the output was:\n{actual}"
            )
        reach.append(ends)
    assert len(got) in reach[-1], (
        f"the engine printed lines the README's example does not show; the output was:\n{actual}"
    )
