"""Bad specs as data: each file in cases/ lists the exact diagnostics it must produce.

A case file starts with lines `# expect: CODE PATH LINE` (PATH may be empty). The loader must
report exactly that set of (code, path, line), no more and no fewer.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import SpecError
from engine.spec import load_spec

CASES = sorted((Path(__file__).parent / "cases").glob("*.yaml"))


def _expected(path: Path) -> list[tuple[str, str, int]]:
    out = []
    for line in path.read_text().splitlines():
        if not line.startswith("# expect:"):
            break
        code, _, rest = line.removeprefix("# expect:").strip().partition(" ")
        field, _, line_no = rest.rpartition(" ")
        out.append((code, field.strip(), int(line_no)))
    return sorted(out)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_case_reports_exactly_the_expected_diagnostics(case: Path) -> None:
    expected = _expected(case)
    assert expected, f"{case.name} has no '# expect:' lines"
    with pytest.raises(SpecError) as info:
        load_spec(case)
    got = sorted((d.code, d.path, d.line) for d in info.value.diagnostics)
    assert got == expected
    for diagnostic in info.value.diagnostics:
        assert diagnostic.file == str(case)
        assert diagnostic.column >= 1
        assert diagnostic.hint, f"{diagnostic.code} at {diagnostic.path} says no fix"
