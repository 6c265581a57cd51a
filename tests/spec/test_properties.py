"""Property tests: whatever the bytes, the loader answers with a Fleet or a SpecError."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import SpecError
from engine.spec import parse_spec

DEMO = Path("specs/demo.yaml").read_bytes()
HETZNER = Path("specs/hetzner.yaml").read_bytes()

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["fleet/v1", "Fleet", "local", "hcloud", "web", "cx22", "debian-12", "<<"]),
)
keys = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["apiVersion", "kind", "name", "provider", "groups", "count", "labels", "image", "<<"]
    ),
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(keys, inner, max_size=5)),
    max_leaves=40,
)


def _judge(raw: bytes) -> None:
    try:
        parse_spec(raw, file="fuzz.yaml")
    except SpecError as exc:
        assert exc.diagnostics
        for d in exc.diagnostics:
            assert d.code and d.message and d.file == "fuzz.yaml"


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes(raw: bytes) -> None:
    _judge(raw)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(alphabet=st.sampled_from(list(" \n\t-:[]{},&*!|>'\"#%@`?<abc123")), max_size=200))
def test_arbitrary_yaml_punctuation(text: str) -> None:
    _judge(text.encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(documents)
def test_arbitrary_yaml_structures(doc: object) -> None:
    _judge(yaml.safe_dump(doc).encode())


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.sampled_from([DEMO, HETZNER]),
    st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=3)), min_size=1, max_size=4),
)
def test_mutated_example_specs(base: bytes, edits: list[tuple[int, bytes]]) -> None:
    raw = bytearray(base)
    for position, replacement in edits:
        at = position % (len(raw) + 1)
        raw[at : at + len(replacement)] = replacement
    _judge(bytes(raw))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.dictionaries(keys, documents, max_size=6))
def test_valid_header_with_arbitrary_body(body: dict[str, object]) -> None:
    doc = {"apiVersion": "fleet/v1", "kind": "Fleet", "name": "x", **body}
    _judge(yaml.safe_dump(doc).encode())


def _paths(node: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _replace(node: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, dict):
        return {**node, head: _replace(node[head], rest, value)}
    assert isinstance(node, list) and isinstance(head, int)
    return [_replace(v, rest, value) if i == head else v for i, v in enumerate(node)]


EXAMPLES = [yaml.safe_load(p.read_text()) for p in sorted(Path("specs").glob("*.yaml"))]


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(EXAMPLES), st.data())
def test_example_specs_with_one_subtree_replaced(
    spec: dict[str, object], data: st.DataObject
) -> None:
    paths = _paths(spec)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths[1:]))
        spec = _replace(spec, path, data.draw(documents))  # type: ignore[assignment]
        paths = _paths(spec)
    _judge(yaml.safe_dump(spec).encode())
