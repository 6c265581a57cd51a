"""Read one YAML document into plain Python data, remembering where every value came from.

PyYAML's own loaders keep the last of two equal keys, expand aliases without limit and recurse
once per nesting level. This reader builds the data from libyaml's event stream with an explicit
stack instead, so it can refuse duplicate keys, alias bombs and deep nesting with a position,
and record `(line, column)` for every value and every mapping key.

Values follow the YAML 1.2 core schema, as editors do (yaml-language-server reads with the npm
`yaml` package): `yes`, `on`, `3_0`, `1:20` and `2026-01-01` are text, `0o17` is a number.
PyYAML alone would read YAML 1.1, where they are booleans, numbers and dates: a spec would mean
one thing to the engine and another to the editor that checked it. Mapping keys are kept as the
text the user wrote (`on:` stays "on", not True). Merge keys (`<<: *defaults`) are supported.

Nesting is limited by MAX_DEPTH whatever the parser: libyaml 0.2.5 and later stop at 1000
levels themselves, and that error is reported as yaml_too_deep like ours.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from engine.errors import Diagnostic

Path = tuple[str | int, ...]
Position = tuple[int, int]

MAX_DEPTH = 64
MAX_NODES = 500_000

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MERGE = object()  # what `<<` reads as; it only means "merge" in key position
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_TAG = "tag:yaml.org,2002:"
_SUPPORTED_TAGS = frozenset(
    f"{_TAG}{name}" for name in ("null", "bool", "int", "float", "str", "map", "seq")
)

# The YAML 1.2 core schema (spec section 10.3.2): plain scalars matching none of these are text.
_CORE_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_CORE_BOOL = {
    **dict.fromkeys(("true", "True", "TRUE"), True),
    **dict.fromkeys(("false", "False", "FALSE"), False),
}
_CORE_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_CORE_FLOAT = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)
# libyaml's own nesting limit (0.2.5 and later); its message is the only sign of it.
_LIBYAML_TOO_DEEP = "exceeded maximum nesting depth"


@dataclass(slots=True)
class Document:
    """The data of a document and the 1-based (line, column) of each value and key."""

    data: Any
    positions: dict[Path, Position] = field(default_factory=dict)
    key_positions: dict[Path, Position] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> Position:
        """Where `path` was written; for a value that is absent, where its nearest parent is."""
        if key and path in self.key_positions:
            return self.key_positions[path]
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (1, 1))


class YamlProblem(Exception):
    """A document that cannot be read; `diagnostic` says where and why."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


@dataclass(slots=True)
class _Frame:
    path: Path
    anchor: str | None
    position: Position
    is_mapping: bool
    items: list[Any] = field(default_factory=list)
    pending_key: tuple[str, Position, bool] | None = None
    size: int = 1


def _pos(mark: Any) -> Position:
    return (mark.line + 1, mark.column + 1)


def _problem(code: str, message: str, hint: str, position: Position, file: str) -> YamlProblem:
    line, column = position
    return YamlProblem(
        Diagnostic(code=code, message=message, hint=hint, file=file, line=line, column=column)
    )


class _Reader:
    def __init__(self, file: str) -> None:
        self.file = file
        self.doc = Document(data=None)
        self.stack: list[_Frame] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.nodes = 0
        self.documents = 0

    def fail(self, code: str, message: str, hint: str, mark: Any) -> YamlProblem:
        return _problem(code, message, hint, _pos(mark), self.file)

    def child_path(self, event: Any) -> Path:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if not top.is_mapping:
            return (*top.path, len(top.items))
        if top.pending_key is None:
            raise self.fail(
                "yaml_complex_key",
                "a key must be a plain word, not a list or a map",
                "write the key as text",
                event.start_mark,
            )
        return (*top.path, top.pending_key[0])

    def count(self, size: int, mark: Any) -> None:
        self.nodes += size
        if self.nodes > MAX_NODES:
            raise self.fail(
                "yaml_too_large",
                f"the document expands to more than {MAX_NODES:,} values",
                "remove repeated aliases (*name); a fleet spec needs far fewer values",
                mark,
            )

    def check_tag(self, tag: str, event: Any) -> None:
        if tag not in _SUPPORTED_TAGS and tag != _MERGE_TAG:
            raise self.fail(
                "yaml_tag",
                f"the tag {tag} is not supported",
                "remove the tag; a fleet spec uses plain strings, numbers, booleans, lists, maps",
                event.start_mark,
            )

    def scalar(self, event: Any) -> Any:
        tag = event.tag
        is_plain = tag is None and event.implicit[0]
        if is_plain and event.value == "<<":
            return _MERGE
        if tag not in (None, "!"):
            self.check_tag(tag, event)
            if tag == _MERGE_TAG:
                return _MERGE
        try:
            if tag in (None, "!"):
                return read_scalar(event.value) if is_plain else event.value
            return _read_tagged(tag.removeprefix(_TAG), event.value)
        except ValueError as exc:
            raise self.fail(
                "yaml_value",
                f"cannot read this value: {exc}",
                "quote it to make it text, or write a plain number, true/false or null",
                event.start_mark,
            ) from None

    def add(self, value: Any, size: int, position: Position, event: Any) -> None:
        """Attach a finished value to its parent (or make it the document's root)."""
        top = self.stack[-1] if self.stack else None
        is_key = top is not None and top.is_mapping and top.pending_key is None
        if value is _MERGE and not is_key:
            value = "<<"
        if not self.stack:
            self.doc.data = value
            self.doc.positions[()] = position
            return
        top = self.stack[-1]
        top.size += size
        if not top.is_mapping:
            self.doc.positions[(*top.path, len(top.items))] = position
            top.items.append(value)
            return
        if top.pending_key is None:
            top.pending_key = (self.key_text(value, event), position, value is _MERGE)
            return
        key, key_position, is_merge = top.pending_key
        top.pending_key = None
        if not is_merge:
            self.doc.positions[(*top.path, key)] = position
        top.items.append((key, value, key_position, is_merge, event.start_mark))

    def key_text(self, value: Any, event: Any) -> str:
        if isinstance(value, dict | list):
            raise self.fail(
                "yaml_complex_key",
                "a key must be a plain word, not a list or a map",
                "write the key as text",
                event.start_mark,
            )
        if value is _MERGE:
            return "<<"
        return str(getattr(event, "value", value))

    def close_mapping(self, frame: _Frame) -> dict[str, Any]:
        explicit: dict[str, Any] = {}
        merged: dict[str, Any] = {}
        for key, value, key_position, is_merge, mark in frame.items:
            if is_merge:
                sources = value if isinstance(value, list) else [value]
                if not all(isinstance(s, dict) for s in sources):
                    raise self.fail(
                        "yaml_merge",
                        "<< must be followed by a map or a list of maps",
                        "merge an anchored map, e.g. <<: *defaults",
                        mark,
                    )
                for source in sources:
                    for k, v in source.items():
                        merged.setdefault(k, v)
                continue
            if key in explicit:
                first = self.doc.key_positions.get((*frame.path, key), key_position)
                line, column = key_position
                raise YamlProblem(
                    Diagnostic(
                        code="duplicate_key",
                        message=f"the key {shown_key(key)!r} appears twice "
                        f"(first on line {first[0]})",
                        hint="keep one of them; YAML would silently use only the last",
                        path=render_path((*frame.path, shown_key(key))),
                        file=self.file,
                        line=line,
                        column=column,
                    )
                )
            explicit[key] = value
            self.doc.key_positions[(*frame.path, key)] = key_position
        if merged:
            return {**merged, **explicit}
        return explicit

    def read(self, text: str) -> Document:
        events = yaml.parse(text, Loader=_Loader)
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                self.documents += 1
                if self.documents > 1:
                    raise self.fail(
                        "yaml_multiple_documents",
                        "the file holds more than one YAML document",
                        "keep one fleet per file and remove the extra '---'",
                        event.start_mark,
                    )
            elif isinstance(event, yaml.ScalarEvent):
                value = self.scalar(event)
                self.count(1, event.start_mark)
                if event.anchor:
                    self.anchors[event.anchor] = (value, 1)
                self.add(value, 1, _pos(event.start_mark), event)
            elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
                if len(self.stack) >= MAX_DEPTH:
                    raise _too_deep(_pos(event.start_mark), self.file)
                if event.tag not in (None, "!"):
                    self.check_tag(event.tag, event)
                self.count(1, event.start_mark)
                self.stack.append(
                    _Frame(
                        path=self.child_path(event),
                        anchor=event.anchor,
                        position=_pos(event.start_mark),
                        is_mapping=isinstance(event, yaml.MappingStartEvent),
                    )
                )
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                frame = self.stack.pop()
                value = self.close_mapping(frame) if frame.is_mapping else frame.items
                if frame.anchor:
                    self.anchors[frame.anchor] = (value, frame.size)
                self.add(value, frame.size, frame.position, event)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in self.anchors:
                    raise self.fail(
                        "yaml_alias",
                        f"the alias *{event.anchor} refers to no anchor defined before it",
                        f"define &{event.anchor} earlier in the file",
                        event.start_mark,
                    )
                value, size = self.anchors[event.anchor]
                self.count(size, event.start_mark)
                self.add(value, size, _pos(event.start_mark), event)
        return self.doc


def _too_deep(position: Position, file: str) -> YamlProblem:
    return _problem(
        "yaml_too_deep",
        f"values are nested more than {MAX_DEPTH} levels deep",
        "a fleet spec nests a few levels; check for a runaway structure",
        position,
        file,
    )


def read_scalar(text: str) -> Any:
    """What a plain (unquoted) scalar means under the YAML 1.2 core schema.

    >>> [read_scalar(t) for t in ("yes", "3_0", "0o17", "0x1F", "1e3", "~", "TRUE", "1:20")]
    ['yes', '3_0', 15, 31, 1000.0, None, True, '1:20']

    Raises ValueError for an integer too long to convert (over 4300 digits).
    """
    if text in _CORE_NULL:
        return None
    if text in _CORE_BOOL:
        return _CORE_BOOL[text]
    if _CORE_INT.fullmatch(text):
        if text.startswith("0o"):
            return int(text[2:], 8)
        return int(text[2:], 16) if text.startswith("0x") else int(text)
    if _CORE_FLOAT.fullmatch(text):
        lowered = text.lower()
        if lowered.endswith((".inf", ".nan")):
            return float(lowered.replace(".", ""))
        return float(text)
    return text


def _read_tagged(kind: str, text: str) -> Any:
    """A scalar with an explicit tag (`!!int "3"`): its plain reading, if that is of the kind.

    `!!float 3` and `!!bool yes` are refused: editors warn about them and read text.
    """
    if kind == "str":
        return text
    value = read_scalar(text)
    readings = {"null": type(None), "bool": bool, "int": int, "float": float}
    if kind in readings and type(value) is readings[kind]:
        return value
    raise ValueError(f'"{text}" is not a YAML 1.2 {kind}')


_YAML11_TAGS = frozenset(f"{_TAG}{name}" for name in ("bool", "int", "float"))
_YAML11_RESOLVER: Any = yaml.resolver.Resolver()


def yaml11_reading(text: str) -> Any:
    """What YAML 1.1 (PyYAML's and older tools' default) reads from a plain scalar.

    Only for hints: `yes` was True there and `3_0` was 30, so a user who wrote them meant that.

    >>> [yaml11_reading(t) for t in ("yes", "3_0", "1:20", "web")]
    [True, 30, 80, 'web']
    """
    if text in ("y", "Y", "n", "N"):
        return text in ("y", "Y")  # YAML 1.1 booleans that PyYAML's resolver leaves out
    tag = _YAML11_RESOLVER.resolve(yaml.ScalarNode, text, (True, False))
    if tag not in _YAML11_TAGS:
        return text
    try:
        return yaml.constructor.SafeConstructor().construct_object(yaml.ScalarNode(tag, text))
    except (yaml.YAMLError, ValueError):
        return text


# A key shown in a message about it (unknown, repeated, badly formed) is cut after this many
# characters, or a file that is no spec, such as /etc/shadow, would have its lines printed. It
# is more than any key of the spec has, and what root's line in /etc/shadow holds before its
# password hash ("root:$6$" and a 16-character salt).
SHOWN_KEY_MAX = 24


def shown_key(key: str | int) -> str | int:
    """`key` as a message may show it: cut to SHOWN_KEY_MAX characters and "..." if longer,
    and cut after an "=" (`PASSWORD=hunter2` is a value written into a key)."""
    if not isinstance(key, str):
        return key
    name, equals, value = key.partition("=")
    if equals and value:
        return f"{shown_key(name)}=..."
    if len(key) > SHOWN_KEY_MAX:
        return f"{key[:SHOWN_KEY_MAX]}..."
    return key


def render_path(path: Path) -> str:
    """Render a path the way users read it: `groups[1].labels["app.io/tier"]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def read_yaml(text: str, file: str) -> Document:
    """Parse `text` (one YAML document) into a Document.

    Raises YamlProblem with a positioned Diagnostic for syntax errors, duplicate keys,
    unsupported tags, unreadable values, alias bombs and nesting deeper than MAX_DEPTH.
    """
    reader = _Reader(file)
    try:
        return reader.read(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "invalid YAML"
        context = f" {exc.context}" if exc.context else ""
        position = _pos(mark) if mark is not None else (1, 1)
        if _LIBYAML_TOO_DEEP in problem:
            raise _too_deep(position, file) from None
        raise _problem(
            "yaml_syntax",
            f"{problem}{context}",
            "check the indentation, colons and quotes on this line and the one before",
            position,
            file,
        ) from None
    except yaml.YAMLError as exc:
        raise _problem("yaml_syntax", str(exc), "fix the YAML syntax", (1, 1), file) from None


_PLAIN_SCALAR = re.compile(r"[^\s,\]}#]+")


def replace_number(text: str, doc: Document, path: Path, value: int) -> str:
    """`text` with the number written at `path` (of `doc`, read from `text`) replaced by
    `value`, and nothing else touched: comments, quoting and layout stay as written, in YAML
    and JSON alike. ValueError when no plain number is written there."""
    if path not in doc.positions:
        raise ValueError(f"{render_path(path)} is not written in the document")
    line, column = doc.positions[path]
    lines = text.splitlines(keepends=True)
    written = lines[line - 1]
    found = _PLAIN_SCALAR.match(written, column - 1)
    if found is None or not isinstance(read_scalar(found.group()), int | float):
        raise ValueError(f"{render_path(path)} is not a plain number")
    lines[line - 1] = f"{written[: found.start()]}{value}{written[found.end() :]}"
    return "".join(lines)
