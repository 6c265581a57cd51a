"""The JSON Schema itself: valid 2020-12, strict, and every field documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from engine.errors import SpecError
from engine.spec import (
    ENV_NAME_FIELDS,
    SCHEMA_HINTS,
    _describe,
    fleet_schema,
    parse_spec,
    schema_nodes,
)

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


def _fields_of(node: Any, ref: str, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The data paths ("*" for any list item) whose schema is `ref`."""
    if not isinstance(node, dict):
        return set()
    if node.get("$ref") == ref:
        return {path}
    found: set[tuple[str, ...]] = set()
    if "$ref" in node:
        found |= _fields_of(SCHEMA["$defs"][node["$ref"].removeprefix("#/$defs/")], ref, path)
    for name, prop in node.get("properties", {}).items():
        found |= _fields_of(prop, ref, (*path, name))
    found |= _fields_of(node.get("items"), ref, (*path, "*"))
    for branch in node.get("anyOf", []) + node.get("oneOf", []):
        found |= _fields_of(branch, ref, path)
    return found


def test_every_field_that_names_a_variable_is_checked_for_a_pasted_secret() -> None:
    assert _fields_of(SCHEMA, "#/$defs/envName") == set(ENV_NAME_FIELDS)
