"""The engine and the editor agree: specs are read and schemas compiled by the libraries that
yaml-language-server uses (the npm yaml package, ajv 8), run in Node by editor.mjs.

.ci/setup installs them (npm ci into tests/editor/node_modules, versions pinned by its lock).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.errors import SpecError
from engine.spec import load_spec
from engine.yamldoc import YamlProblem, read_yaml
from tests.support.cli import ROOT

HERE = Path(__file__).resolve().parent
SCHEMAS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "schemas").glob("*.json"))
REFUSED = object()  # the engine refuses the value on purpose, with a positioned error

# (what the user writes after `key: `, why it is in the table). Every value must be read the
# same by the engine and the editor, except those marked REFUSED.
VALUES: list[tuple[str, object]] = [
    ("yes", "YAML 1.1 boolean, text in 1.2"),
    ("no", "YAML 1.1 boolean"),
    ("on", "YAML 1.1 boolean"),
    ("off", "YAML 1.1 boolean"),
    ("Yes", "YAML 1.1 boolean"),
    ("OFF", "YAML 1.1 boolean"),
    ("y", "YAML 1.1 boolean (in the spec, not in PyYAML)"),
    ("n", "YAML 1.1 boolean (in the spec, not in PyYAML)"),
    ("true", "boolean"),
    ("True", "boolean"),
    ("TRUE", "boolean"),
    ("false", "boolean"),
    ("tRUE", "not a boolean in either"),
    ("3_0", "YAML 1.1 integer 30"),
    ("1_000.5", "YAML 1.1 float"),
    ("0o3", "YAML 1.2 octal, text in 1.1"),
    ("03", "YAML 1.1 octal, decimal in 1.2"),
    ("012", "YAML 1.1 octal 10, decimal 12 in 1.2"),
    ("0x1F", "hexadecimal"),
    ("-0x1F", "no sign on hexadecimal in 1.2"),
    ("0b101", "YAML 1.1 binary"),
    ("1:20", "YAML 1.1 sexagesimal 80"),
    ("1:20:30.5", "YAML 1.1 sexagesimal float"),
    ("2026-01-01", "YAML 1.1 timestamp"),
    ("2026-01-01T10:00:00Z", "YAML 1.1 timestamp"),
    (".5", "float without a leading digit"),
    ("1.", "float without decimals"),
    ("+1", "signed integer"),
    ("-7", "signed integer"),
    ("1e3", "float in exponent form"),
    ("1E-3", "float in exponent form"),
    ("3.0", "whole-number float"),
    ("+.5e+2", "signed float"),
    (".inf", "infinity"),
    ("-.Inf", "negative infinity"),
    ("+.INF", "positive infinity"),
    (".nan", "not a number"),
    (".NaN", "not a number"),
    (".NAN", "not a number"),
    ("~", "null"),
    ("", "null"),
    ("null", "null"),
    ("Null", "null"),
    ("NULL", "null"),
    ("nULL", "not null in either"),
    ('""', "empty text"),
    ("'yes'", "quoted: text"),
    ('"0x1F"', "quoted: text"),
    ("<<", "the merge key is only special as a key"),
    ("!!int '3'", "explicit tag"),
    ("!!str 3", "explicit tag"),
    ("!!float 3.5", "explicit tag"),
    ("!!float 3", REFUSED),  # not a float's form; the editor warns and reads text
    ("!!int 3.0", REFUSED),  # not an integer's form; the editor warns and reads text
    ("!!bool yes", REFUSED),  # not a boolean; the editor warns and reads text
    ("!!timestamp 2026-01-01", REFUSED),  # no field takes a date; the editor makes a Date
    ("!!python/name:os.system x", REFUSED),  # unknown tag; the editor warns and reads text
    ("1" * 5000, REFUSED),  # too long to be a number; the editor reads Infinity
]


def _node(*args: str) -> Any:
    if shutil.which("node") is None or not (HERE / "node_modules").is_dir():
        pytest.fail("node or tests/editor/node_modules is missing: run bash .ci/setup")
    result = subprocess.run(
        ["node", str(HERE / "editor.mjs"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _tagged(value: object) -> list[str]:
    """A scalar as editor.mjs writes it: [kind, text]; numbers compare by value later."""
    if value is None:
        return ["null", "null"]
    if isinstance(value, bool):
        return ["boolean", str(value).lower()]
    if isinstance(value, int | float):
        return ["number", repr(value)]
    assert isinstance(value, str)
    return ["string", value]


def _same(engine: list[str], editor: list[str]) -> bool:
    if engine[0] != editor[0]:
        return False
    if engine[0] != "number":
        return engine[1] == editor[1]
    ours, theirs = float(engine[1]), float(editor[1])
    return (math.isnan(ours) and math.isnan(theirs)) or ours == theirs


def test_every_schema_compiles_in_strict_ajv() -> None:
    assert _node("compile", *SCHEMAS) == dict.fromkeys(SCHEMAS)


def test_the_engine_reads_every_value_as_the_editor_does(tmp_path: Path) -> None:
    agreed = [(i, text) for i, (text, why) in enumerate(VALUES) if why is not REFUSED]
    document = tmp_path / "values.yaml"
    document.write_text("".join(f"v{i}: {text}\n" for i, text in agreed))
    editor = _node("read", str(document))
    engine = read_yaml(document.read_text(), str(document)).data
    differ = [
        (text, _tagged(engine[f"v{i}"]), editor[f"v{i}"])
        for i, text in agreed
        if not _same(_tagged(engine[f"v{i}"]), editor[f"v{i}"])
    ]
    assert differ == []


@pytest.mark.parametrize("text", [text for text, why in VALUES if why is REFUSED])
def test_a_refused_value_is_a_positioned_error(text: str) -> None:
    with pytest.raises(YamlProblem) as info:
        read_yaml(f"a: 1\nv: {text}\n", "values.yaml")
    assert (info.value.diagnostic.line, info.value.diagnostic.column) == (2, 4)


def test_the_example_specs_are_valid_for_the_editor_too() -> None:
    specs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("*.yaml"))
    assert _node("validate", "schemas/fleet.v1.schema.json", *specs) == {s: [] for s in specs}


def test_the_editor_and_the_engine_refuse_the_same_yaml_1_1_values(tmp_path: Path) -> None:
    spec = tmp_path / "yes.yaml"
    spec.write_text(
        "apiVersion: fleet/v1\nkind: Fleet\nname: yes\nprovider: {name: local}\n"
        "groups: [{name: web, count: 3_0, public_ipv4: yes}]\n"
    )
    report = _node("validate", "schemas/fleet.v1.schema.json", str(spec))
    assert report == {
        str(spec): ["/groups/0/count: must be integer", "/groups/0/public_ipv4: must be boolean"]
    }
    with pytest.raises(SpecError) as info:
        load_spec(spec)
    assert [(d.code, d.path) for d in info.value.diagnostics] == [
        ("wrong_type", "groups[0].count"),
        ("wrong_type", "groups[0].public_ipv4"),
    ]
