"""What the README says of the repository itself: its folders, schemas and benchmarks."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.support.cli import ROOT
from tests.support.readme import README, section

BENCHMARKS = sorted(set(re.findall(r"`python (bench/\w+\.py)( \[[^\]]*\])?", README.read_text())))


def test_the_layout_names_every_folder_of_the_repository() -> None:
    block = re.search(r"```\n(.*?)```", section("Layout"), re.DOTALL)
    assert block, "the README shows no layout"
    listed = {line.split("/")[0] for line in block.group(1).splitlines()}
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    folders = {path.split("/")[0] for path in tracked if "/" in path}
    assert listed == {f for f in folders if not f.startswith(".")}


def test_the_layout_names_what_every_schema_describes() -> None:
    said = re.search(r"schemas/ +JSON Schemas: (.*)", section("Layout"))
    assert said, "the README's layout does not say what schemas/ holds"
    words = set(re.split(r"[ ,]+", said.group(1).replace(" and ", " ")))
    for schema in (ROOT / "schemas").glob("*.json"):
        described = schema.name.split(".")[0]  # fleet, plan, phone-home, heartbeat, agent-event
        assert described in words or set(described.split("-")) <= words, schema


@pytest.mark.parametrize(("script", "options"), BENCHMARKS, ids=[b[0] for b in BENCHMARKS])
def test_every_benchmark_the_readme_names_exists_and_takes_its_options(
    script: str, options: str
) -> None:
    assert (ROOT / script).is_file()
    for option in re.findall(r"--[a-z-]+", options):
        usage = subprocess.run(
            [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert usage.returncode == 0 and option in usage.stdout, usage.stdout + usage.stderr
