"""The request bodies the control plane takes, and their validation into field-level errors.

The phone-home body's schema is schemas/phone-home.v1.schema.json, shared with the program
that sends it (engine/cloudinit/phone_home.py). The agent's heartbeat and event bodies are
checked for the fields the control plane reads, and may carry more (the agent's own schemas
describe them in full).

A body is checked twice over only when it is bad. The check that decides is fastjsonschema's
code compiled from the schema (about 10 microseconds a body, against about 250 for
jsonschema, which would be a quarter of a phone-home's whole cost); jsonschema then lists
every bad field for the answer. The schemas use no keyword whose meaning differs between
the two (no `$ref` beside other keywords, no `unevaluated*`, no `prefixItems`).

Before any of that, the nesting depth is measured in one pass that does not recurse: json and
both validators recurse once per level, and a body of nothing but `[` would otherwise end in
a RecursionError (a 500) before anyone looked at its token. Python's json reads NaN, Infinity
and numbers past a double's range (1e400) as floats that JSON has no way to write back: no
body carries them, and one that does is refused at every field that holds one.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request

from engine.controlplane.errors import ApiError, FieldError

SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"
MAX_FIELD_ERRORS = 20
# The bodies need five levels; json and the validators recurse once per level.
MAX_JSON_DEPTH = 32

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*(?:"|\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")

_DNS_LABEL = {"type": "string", "pattern": "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"}
# The largest number an INTEGER column holds on PostgreSQL (SQLite's hold up to 2^63 - 1):
# every whole number a body brings to the store is at most this.
COLUMN_INT_MAX = 2**31 - 1

HEARTBEAT: dict[str, Any] = {
    "type": "object",
    "required": ["fleet", "server", "metrics", "containers", "tls_fingerprint"],
    "properties": {
        "fleet": _DNS_LABEL,
        "server": _DNS_LABEL,
        "sequence": {"type": "integer", "minimum": 0, "maximum": COLUMN_INT_MAX},
        "metrics": {"type": "object"},
        "containers": {"type": ["object", "null"]},
        "tls_fingerprint": {"type": "string", "maxLength": 200},
    },
}

AGENT_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["fleet", "server", "event_id", "event", "container"],
    "properties": {
        "fleet": _DNS_LABEL,
        "server": _DNS_LABEL,
        "event_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "event": {"type": "string", "pattern": "^[a-z_]{1,40}$"},
        "time": {"type": "string", "maxLength": 40},
        "container": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "maxLength": 100},
                "name": {"type": "string", "maxLength": 200},
                "image": {"type": "string", "maxLength": 500},
            },
        },
        "exit_code": {
            "type": ["integer", "null"],
            "minimum": -COLUMN_INT_MAX - 1,
            "maximum": COLUMN_INT_MAX,
        },
    },
}


@cache
def phone_home_schema() -> dict[str, Any]:
    """schemas/phone-home.v1.schema.json."""
    schema: dict[str, Any] = json.loads((SCHEMAS / "phone-home.v1.schema.json").read_text())
    return schema


def _schema(name: str) -> dict[str, Any]:
    if name == "phone-home":
        return phone_home_schema()
    return HEARTBEAT if name == "heartbeat" else AGENT_EVENT


@cache
def _validator(name: str) -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(_schema(name), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _fast_check(name: str) -> Callable[[Any], Any]:
    import fastjsonschema

    # Addresses are read by the same rules as jsonschema's (the ipaddress module), so the two
    # checks agree on them.
    formats = {"ipv4": _is_ipv4, "ipv6": _is_ipv6}
    check: Callable[[Any], Any] = fastjsonschema.compile(_schema(name), formats=formats)
    return check


def _is_ipv4(value: str) -> bool:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return False
    return True


def _is_ipv6(value: str) -> bool:
    try:
        return not ipaddress.IPv6Address(value).scope_id
    except ValueError:
        return False


def compile_checks() -> None:
    """Compile every body check now (tens of milliseconds), at start-up, rather than in the
    first requests, which would all wait for it."""
    for kind in ("phone-home", "heartbeat", "agent-event"):
        _fast_check(kind)
        _validator(kind)


def is_nested_deeper(text: str, limit: int) -> bool:
    """Whether the JSON `text` nests arrays and objects more than `limit` levels deep.

    One pass, no recursion, brackets inside strings ignored: escapes go first (so `\\"`
    ends no string), then strings, then all that is not a bracket. On text that is not JSON
    it may find more depth than json.loads reaches, never less: json.loads stops at the first
    error, and up to there both read the text alike. `is_nested_deeper('[[1]]', 1)` is True.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    depth = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def parse_json(raw: bytes) -> Any:
    """The JSON document in `raw`, or ApiError 400 (malformed_json, body_too_deep), or 422
    (invalid_body) naming each NaN, Infinity or number past a double's range."""
    try:
        # Decoded as json.loads would decode bytes, so the depth is measured on what it reads.
        text = raw.decode(json.detect_encoding(raw), "surrogatepass")
    except UnicodeDecodeError as error:
        raise ApiError(400, "malformed_json", f"the body is not JSON: {error}") from None
    if is_nested_deeper(text, MAX_JSON_DEPTH):
        raise ApiError(
            400,
            "body_too_deep",
            f"the body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
        )
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_not_finite)
    except ValueError as error:
        raise ApiError(400, "malformed_json", f"the body is not JSON: {error}") from None
    except _NotFinite:
        # Read again as Python reads it, only to find where the numbers are.
        fields = [
            FieldError(path=path, message=_NOT_FINITE)
            for path in _non_finite_paths(json.loads(text))[:MAX_FIELD_ERRORS]
        ]
        raise ApiError(
            422, "invalid_body", "the body holds a number that is not finite", fields=fields
        ) from None


_NOT_FINITE = "send a finite number: JSON has no NaN or Infinity, and a double ends at 1.8e308"


class _NotFinite(Exception):
    """A number of the body is NaN, infinite, or past a double's range."""


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotFinite
    return number


def _not_finite(text: str) -> float:
    raise _NotFinite


def _non_finite_paths(document: Any) -> list[str]:
    """The paths of the NaN and infinite floats in `document`, in the order they are written."""
    found = []
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while pending:
        parts, value = pending.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(_path(parts))
        elif isinstance(value, dict):
            pending.extend(((*parts, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            pending.extend(((*parts, i), v) for i, v in reversed(list(enumerate(value))))
    return found


def check_body(kind: str, body: Any) -> dict[str, Any]:
    """`body` if it is a valid `kind` body ("phone-home", "heartbeat", "agent-event"), else
    ApiError 422 listing each bad field (path like `addresses.public_ipv4[0]`)."""
    import fastjsonschema

    try:
        _fast_check(kind)(body)
    except fastjsonschema.JsonSchemaValueException as error:
        parts = [int(part) if part.isdigit() else part for part in error.path[1:]]
        message = str(error.message).removeprefix(f"{error.name} ")
        first = FieldError(path=_path(parts), message=message[:200])
    else:
        assert isinstance(body, dict)
        return body
    errors = sorted(_validator(kind).iter_errors(body), key=lambda e: list(map(str, e.path)))
    # jsonschema lists every bad field; where it finds none (a format it does not check,
    # such as date-time without its optional helper), the first check's finding stands.
    fields = [
        FieldError(path=_path(error.absolute_path), message=_message(error))
        for error in errors[:MAX_FIELD_ERRORS]
    ] or [first]
    raise ApiError(422, "invalid_body", f"the {kind} body is not valid", fields=fields)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"


def _message(error: Any) -> str:
    message = str(error.message)
    # jsonschema quotes the offending value; a hostile body could make that huge.
    return message if len(message) <= 200 else message[:197] + "..."


async def read_json(request: Request, limit: int) -> Any:
    """The request's JSON body: 415 unless it says application/json, 413 past `limit` bytes,
    400 when it cannot be parsed."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    return parse_json(await read_body(request, limit))


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body: 413 past `limit` bytes (before reading, when Content-Length says
    so), 400 when Content-Length is not a number or the client went away part-way."""
    too_large = ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    length = request.headers.get("content-length")
    if length is not None:
        if not re.fullmatch(r"[0-9]{1,19}", length):
            raise ApiError(400, "bad_header", "Content-Length is not a number")
        if int(length) > limit:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(
            400, "body_incomplete", "the client went away before the body's end"
        ) from None
    return b"".join(chunks)
