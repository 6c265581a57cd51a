"""Specs are read with the YAML 1.2 core schema, as editors read them; 1.1 habits get a hint.

tests/editor/ checks the same values against the npm `yaml` package itself.
"""

from __future__ import annotations

import math

import pytest

from engine.errors import SpecError
from engine.spec import parse_spec
from engine.yamldoc import YamlProblem, read_yaml, replace_number

# (what the user writes after `v: `, what the engine reads)
VALUES: list[tuple[str, object]] = [
    ("yes", "yes"),
    ("no", "no"),
    ("on", "on"),
    ("Off", "Off"),
    ("y", "y"),
    ("n", "n"),
    ("3_0", "3_0"),
    ("0o3", 3),
    ("03", 3),
    ("012", 12),
    ("0x1F", 31),
    ("-0x1F", "-0x1F"),
    ("0b101", "0b101"),
    ("1:20", "1:20"),
    ("2026-01-01", "2026-01-01"),
    ("+1", 1),
    ("-1", -1),
    ("1e3", 1000.0),
    ("3.0", 3.0),
    (".5", 0.5),
    ("1.", 1.0),
    ("~", None),
    ("", None),
    ("null", None),
    ("Null", None),
    ("NULL", None),
    ("nULL", "nULL"),
    ('""', ""),
    ("'yes'", "yes"),
    ("true", True),
    ("True", True),
    ("TRUE", True),
    ("tRUE", "tRUE"),
    ("false", False),
    (".inf", math.inf),
    ("-.Inf", -math.inf),
    ("!!int '3'", 3),
    ("!!str 3", "3"),
    ("!!float 3.5", 3.5),
    ("!!null ''", None),
]


@pytest.mark.parametrize(("text", "expected"), VALUES, ids=[t for t, _ in VALUES])
def test_scalars_follow_the_yaml_1_2_core_schema(text: str, expected: object) -> None:
    value = read_yaml(f"v: {text}\n", "t.yaml").data["v"]
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", [".nan", ".NaN", ".NAN"])
def test_not_a_number(text: str) -> None:
    assert math.isnan(read_yaml(f"v: {text}\n", "t.yaml").data["v"])


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("!!bool yes", "yaml_value"),
        ("!!float 3", "yaml_value"),
        ("!!int 3.0", "yaml_value"),
        ("!!int 3_0", "yaml_value"),
        ("!!timestamp 2026-01-01", "yaml_tag"),
        ("1" * 5000, "yaml_value"),
    ],
)
def test_values_that_cannot_be_read_are_refused_with_a_position(text: str, code: str) -> None:
    with pytest.raises(YamlProblem) as info:
        read_yaml(f"a: 1\nv: {text}\n", "t.yaml")
    assert (info.value.diagnostic.code, info.value.diagnostic.line) == (code, 2)


def test_keys_stay_the_text_the_user_wrote() -> None:
    data = read_yaml("on: 1\ntrue: 2\n~: 3\n0x1F: 4\n", "t.yaml").data
    assert list(data) == ["on", "true", "~", "0x1F"]


SPEC = """apiVersion: fleet/v1
kind: Fleet
name: web
provider: {{name: local}}
groups:
  - {{name: web, count: {count}, public_ipv4: {ipv4}}}
"""


@pytest.mark.parametrize(
    ("count", "ipv4", "path", "hint"),
    [
        ("1", "yes", "groups[0].public_ipv4", 'write true or false: "yes" is text in YAML 1.2'),
        ("1", "off", "groups[0].public_ipv4", 'write true or false: "off" is text in YAML 1.2'),
        ("1", "n", "groups[0].public_ipv4", 'write true or false: "n" is text in YAML 1.2'),
        ("3_0", "true", "groups[0].count", 'write 30: "3_0" is text in YAML 1.2'),
        ("1:20", "true", "groups[0].count", 'write 80: "1:20" is text in YAML 1.2'),
    ],
)
def test_a_yaml_1_1_value_gets_a_hint_in_yaml_1_2_terms(
    count: str, ipv4: str, path: str, hint: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(SPEC.format(count=count, ipv4=ipv4).encode(), file="web.yaml")
    (diagnostic,) = info.value.diagnostics
    assert (diagnostic.code, diagnostic.path) == ("wrong_type", path)
    assert diagnostic.hint.startswith(hint)


def test_yes_is_an_ordinary_label_value() -> None:
    raw = SPEC.format(count=1, ipv4="true").replace("count: 1", "count: 1, labels: {ok: yes}")
    fleet = parse_spec(raw.encode())
    assert fleet.groups[0].labels == (("ok", "yes"),)


def test_whole_number_floats_become_integers_where_the_schema_wants_one() -> None:
    raw = SPEC.format(count="3.0", ipv4="true") + (
        "ssh: {port: 2.2e1}\ninstall: {agent: {port: 8000.0}}\nlimits: {memory_gb: 16.0}\n"
    )
    fleet = parse_spec(raw.encode())
    numbers = (fleet.groups[0].count, fleet.ssh.port, fleet.install.agent.port)
    assert numbers == (3, 22, 8000)
    assert all(type(n) is int for n in numbers)
    assert fleet.limits.memory_gb == 16.0


def test_a_number_is_replaced_where_it_is_written_and_nothing_else_changes() -> None:
    text = (
        "# the web fleet\n"
        "groups:\n"
        "  - name: web\n"
        "    count: 3   # three to start\n"
        "    labels: {tier: yes, on: 1:20}\n"
        "  - {name: db, count: 1}\n"
    )
    doc = read_yaml(text, "f.yaml")
    web = replace_number(text, doc, ("groups", 0, "count"), 12)
    assert web == text.replace("count: 3   #", "count: 12   #")
    db = replace_number(text, doc, ("groups", 1, "count"), 0)
    assert db == text.replace("count: 1}", "count: 0}")
    assert read_yaml(db, "f.yaml").data["groups"][0]["labels"] == {"tier": "yes", "on": "1:20"}
    as_json = '{"groups": [{"name": "web", "count": 3}]}'
    assert replace_number(as_json, read_yaml(as_json, "f.json"), ("groups", 0, "count"), 4) == (
        '{"groups": [{"name": "web", "count": 4}]}'
    )
    with pytest.raises(ValueError, match="not a plain number"):
        replace_number(text, doc, ("groups", 0, "name"), 1)
    with pytest.raises(ValueError, match="not written"):
        replace_number(text, doc, ("groups", 2, "count"), 1)
