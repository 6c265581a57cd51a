"""The JSON Schema itself: valid 2020-12, strict, and every field documented."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from engine.spec import fleet_schema

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
