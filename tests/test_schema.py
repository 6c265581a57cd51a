"""The JSON Schema itself: valid 2020-12, strict, and every field documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from engine.errors import SpecError
from engine.spec import SCHEMA_HINTS, _describe, fleet_schema, parse_spec, schema_nodes

SCHEMA = fleet_schema()


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref:
        return {**SCHEMA["$defs"][ref.removeprefix("#/$defs/")], **node}
    return node


def _objects(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "properties" in node:
            found.append((path, node))
        for key, value in node.items():
            found += _objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{path}/{i}")
    return found


def test_schema_is_valid_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_object_rejects_unknown_keys() -> None:
    for path, node in _objects(SCHEMA):
        assert node.get("additionalProperties") is False, path


def test_every_property_has_a_description() -> None:
    for path, node in _objects(SCHEMA):
        for name, prop in node["properties"].items():
            assert _resolve(prop).get("description"), f"{path}/properties/{name}"


def test_every_hint_names_a_node_of_the_schema() -> None:
    nodes = schema_nodes()
    assert set(SCHEMA_HINTS) <= set(nodes)


def test_a_hint_is_found_through_a_ref_and_from_an_any_of_branch() -> None:
    raw = Path("specs/demo.yaml").read_text()
    raw = raw.replace("name: demo", "name: Demo").replace('swap: "0"', "swap: 2g")
    with pytest.raises(SpecError) as info:
        parse_spec(raw.encode())
    hints = {d.path: d.hint for d in info.value.diagnostics}
    assert hints == {
        "name": SCHEMA_HINTS["/$defs/name40"],
        "install.system.swap": SCHEMA_HINTS["/$defs/install/properties/system/properties/swap"],
    }


def test_no_hint_stops_inside_e_g() -> None:
    for pointer, node in schema_nodes().items():
        hint = _describe(node)
        assert not hint.endswith(("e.g", "i.e")), f"{pointer}: {hint}"
