"""Load a fleet spec: bytes -> YAML -> JSON Schema -> semantic checks -> frozen Fleet.

Every problem becomes a Diagnostic with file, line, column, field path, a stable code and a
hint that says how to fix it. All problems of a file are reported together: schema errors
and semantic checks both run, the semantic checks reading the raw data defensively.

Diagnostic codes (stable; tools may match on them):

    file_not_found file_too_large not_text not_utf8 empty not_a_mapping
    yaml_syntax yaml_tag yaml_alias yaml_merge yaml_complex_key yaml_multiple_documents
    yaml_too_deep yaml_too_large duplicate_key yaml_value
    unknown_key missing_key wrong_type invalid_value invalid_format out_of_range
    too_short too_long too_few too_many not_unique not_allowed
    literal_secret not_applicable insecure_url duplicate_name unknown_reference
    unknown_server_type unknown_location unknown_image unavailable architecture_mismatch
    placement_group_too_large invalid_label reserved_label invalid_port invalid_cidr
    overlapping_networks port_conflict dns_name_collision invalid_key user_data_too_large
    unreachable too_frequent unknown_timezone
    internal_error (only from `engine validate`: a bug met in one of several files)
    state_error (only from `engine validate`: what checking a spec reads beside it, such as a
                 refreshed catalog, is damaged; the message says how to fix it)
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import json
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path as FsPath
from typing import Any

from engine.catalog import Catalog, ServerType, load_catalog
from engine.errors import Diagnostic, SpecError
from engine.model import (
    AgentInstall,
    Alert,
    AlertWhen,
    App,
    AppHealth,
    AppPort,
    AppUpdate,
    AppVolume,
    ControlPlane,
    DnsRecord,
    DockerInstall,
    DockerSource,
    Firewall,
    FirewallRule,
    Fleet,
    Group,
    HealthKind,
    Image,
    ImageKind,
    Install,
    Labels,
    LbProtocol,
    LbService,
    Limits,
    LoadBalancer,
    Network,
    Placement,
    Protocol,
    Provider,
    ProviderName,
    Readiness,
    Reconcile,
    ReconcileMode,
    RegistryAuth,
    RestartPolicy,
    RollbackMode,
    Ssh,
    SystemInstall,
    Webhook,
    is_reserved_label,
)
from engine.secrets import is_literal_token
from engine.yamldoc import (
    Document,
    Path,
    YamlProblem,
    read_yaml,
    render_path,
    shown_key,
    yaml11_reading,
)

MAX_SPEC_BYTES = 1 << 20
HCLOUD_PLACEMENT_GROUP_MAX = 10
HCLOUD_FIREWALLS_PER_SERVER = 5
# Room left in the user_data size estimate for what only `engine up` knows.
_TOKEN_ALLOWANCE = 256
_DEPLOY_KEY_ALLOWANCE = "ssh-ed25519 " + "A" * 68 + " fleet-engine-deploy"
_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}

_HCLOUD_LABEL_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_HCLOUD_LABEL_PREFIX = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
_HCLOUD_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
_DO_TAG = re.compile(r"[A-Za-z0-9:_-]{1,255}")
_PRIVATE_KEY = re.compile(r"PRIVATE KEY|^-----BEGIN")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
# Under this a reconcile loop reads the provider more often than anything changes there.
MIN_RECONCILE_INTERVAL_S = 10
METRIC_ALERTS = (AlertWhen.CPU, AlertWhen.MEMORY, AlertWhen.DISK, AlertWhen.LOAD)
PERCENT_ALERTS = (AlertWhen.CPU, AlertWhen.MEMORY, AlertWhen.DISK)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# What a group gets when neither it nor defaults say: the local provider has one sensible
# choice of each, so a first spec needs no catalog knowledge. Names from engine/catalog/local.json.
PROVIDER_DEFAULTS: dict[ProviderName, dict[str, Any]] = {
    ProviderName.LOCAL: {"server_type": "small", "image": "debian-12", "locations": ["local"]},
}


def load_spec(path: str | FsPath, *, state_dir: FsPath | None = None) -> Fleet:
    """Read and validate the spec at `path`. Raises SpecError listing every problem.

    >>> fleet = load_spec("specs/demo.yaml")
    >>> [g.name for g in fleet.groups]
    ['web']
    """
    return parse_spec(read_spec_file(path), file=str(path), state_dir=state_dir)


def read_spec_file(path: str | FsPath) -> bytes:
    """The bytes of the spec file at `path` (SpecError when it is no readable regular file or
    too large), for `parse_spec`."""
    file = str(path)
    try:
        return _read_regular_file(file)
    except FileNotFoundError:
        raise _fail("file_not_found", file, "no such file", "check the path") from None
    except PermissionError:
        raise _fail("file_not_found", file, "permission denied", "make it readable") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise _fail("file_not_found", file, f"cannot be read: {reason}", "check the path") from None


_NOT_FILES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
)


def _refuse_unless_regular(file: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    kind = next((name for is_kind, name in _NOT_FILES if is_kind(mode)), "not a regular file")
    raise _fail("file_not_found", file, f"is {kind}, not a file", "give the path of a .yaml file")


def _read_regular_file(file: str) -> bytes:
    """At most MAX_SPEC_BYTES + 1 bytes of the regular file at `file`.

    A path may name /dev/zero, /dev/urandom or a FIFO nobody writes to: its type is checked
    (through symlinks) before it is opened, so nothing blocks or fills memory. O_NONBLOCK and
    the second check on the open descriptor cover a path swapped for a FIFO in between.
    """
    _refuse_unless_regular(file, FsPath(file).stat().st_mode)
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _refuse_unless_regular(file, info.st_mode)
        if info.st_size > MAX_SPEC_BYTES:
            raise _fail(
                "file_too_large",
                file,
                f"the file has {info.st_size:,} bytes; a spec may have at most {MAX_SPEC_BYTES:,}",
                "a fleet spec describes groups, not single servers: use count",
            )
        return handle.read(MAX_SPEC_BYTES + 1)


def parse_spec(raw: bytes, *, file: str = "<spec>", state_dir: FsPath | None = None) -> Fleet:
    """Validate spec text given as bytes; `file` is only used in messages."""
    if len(raw) > MAX_SPEC_BYTES:
        raise _fail(
            "file_too_large",
            file,
            f"the spec has {len(raw):,} bytes; a spec may have at most {MAX_SPEC_BYTES:,}",
            "a fleet spec describes groups, not single servers: use count",
        )
    text = _decode(raw, file)
    try:
        doc = read_yaml(text, file)
    except YamlProblem as problem:
        raise SpecError((problem.diagnostic,)) from None
    if doc.data is None:
        raise _fail("empty", file, "the file holds no YAML document", _STARTER_HINT)
    if not isinstance(doc.data, dict):
        kind = "a list" if isinstance(doc.data, list) else "a single value"
        line, column = doc.position(())
        raise SpecError(
            (
                Diagnostic(
                    code="not_a_mapping",
                    message=f"the document is {kind}, not a map of fields",
                    hint=_STARTER_HINT,
                    file=file,
                    line=line,
                    column=column,
                ),
            )
        )
    doc.data = _whole_numbers(doc.data, fleet_schema())
    diagnostics = _schema_diagnostics(doc, file)
    diagnostics += _Checks(doc, file, state_dir).run()
    if diagnostics:
        raise SpecError(_finish(diagnostics))
    return _build_fleet(doc.data, file)


_STARTER_HINT = "start the file with 'apiVersion: fleet/v1' and 'kind: Fleet' (see specs/demo.yaml)"


def _fail(code: str, file: str, message: str, hint: str) -> SpecError:
    return SpecError((Diagnostic(code=code, message=message, hint=hint, file=file),))


def _decode(raw: bytes, file: str) -> str:
    if b"\x00" in raw[:65536]:
        raise _fail("not_text", file, "this is a binary file, not YAML text", "give a .yaml file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError(
            (
                Diagnostic(
                    code="not_utf8",
                    message=f"byte 0x{raw[exc.start]:02x} is not valid UTF-8",
                    hint="save the file as UTF-8",
                    file=file,
                    line=line,
                    column=column,
                ),
            )
        ) from None
    return text.removeprefix("\ufeff")


def _finish(diagnostics: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    """Drop other complaints about a field already reported as a literal secret; sort."""
    secret_paths = {d.path for d in diagnostics if d.code == "literal_secret"}
    kept = {
        (d.line, d.column, d.code, d.path, d.message): d
        for d in diagnostics
        if d.code == "literal_secret" or d.path not in secret_paths
    }
    return tuple(sorted(kept.values(), key=lambda d: (d.line, d.column, d.path, d.code)))


def _suggest(word: object, choices: Iterator[str] | list[str] | tuple[str, ...]) -> str:
    choices = list(choices)
    if isinstance(word, str):
        close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
        if close:
            return f'did you mean "{close[0]}"?'
    shown = ", ".join(choices[:12]) + (", ..." if len(choices) > 12 else "")
    return f"choose one of: {shown}"


# --- JSON Schema -------------------------------------------------------------------------


SCHEMA_PATH = FsPath(__file__).resolve().parent.parent / "schemas" / "fleet.v1.schema.json"


@cache
def fleet_schema() -> dict[str, Any]:
    """The fleet spec's JSON Schema, read from the checkout's schemas/ folder."""
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text("utf-8"))
    return schema


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(fleet_schema())


def _definition(ref: str) -> dict[str, Any]:
    definition: dict[str, Any] = fleet_schema()["$defs"][ref.removeprefix("#/$defs/")]
    return definition


# Beyond 2**53 a float no longer holds every whole number; such a count is out of range anyway.
_EXACT_FLOAT = 2**53


def _whole_numbers(value: Any, schema: Mapping[str, Any]) -> Any:
    """`value` with whole-number floats made int where `schema` wants an integer.

    JSON Schema (and so ajv and editors) takes `count: 3.0` as the integer 3: it becomes one
    here, once, so the checks and the model never meet a float where they count or number.
    """
    if "$ref" in schema:
        schema = {**_definition(schema["$ref"]), **schema}
    for branch in (*schema.get("anyOf", ()), *schema.get("oneOf", ())):
        value = _whole_numbers(value, branch)
    if isinstance(value, float) and schema.get("type") == "integer":
        return int(value) if value.is_integer() and abs(value) <= _EXACT_FLOAT else value
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        other = extra if isinstance(extra, dict) else {}
        return {k: _whole_numbers(v, properties.get(k, other)) for k, v in value.items()}
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, dict):
        return [_whole_numbers(v, items) for v in value]
    return value


_TYPE_NAMES = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "object": "a map of fields",
    "array": "a list",
    "null": "empty",
}


def _type_of(value: object) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


def _is_safe_to_show(path: Path, value: object) -> bool:
    """Never echo what could be a secret: token variables and SSH keys stay out of messages."""
    sensitive = (
        is_env_name_field(path)
        or path[:1] == ("ssh",)
        or (path[:1] == ("apps",) and path[2:3] == ("env",) and len(path) > 3)
    )
    return isinstance(value, str) and len(value) <= 64 and not sensitive


def _schema_diagnostics(doc: Document, file: str) -> list[Diagnostic]:
    out: list[Diagnostic] = []
    for error in _validator().iter_errors(doc.data):
        out.extend(_translate(error, doc, file))
    return out


_NAME_HINT = "use lowercase letters, digits and '-', starting with a letter and not ending with '-'"
_SYSTEM = "/$defs/install/properties/system/properties"

# How to fix a value a schema node refuses, by the node's JSON pointer. They live here and not
# in the schema: strict validators (ajv, and so editors) refuse a keyword they do not know.
# A branch of an anyOf takes its parent's hint.
SCHEMA_HINTS = {
    "/properties/ssh/properties/authorized_keys/items": "paste one line of a .pub file, "
    "e.g. 'ssh-ed25519 AAAAC3... you@laptop'",
    "/$defs/name40": _NAME_HINT,
    "/$defs/name63": _NAME_HINT,
    "/$defs/group/properties/name": _NAME_HINT,
    "/$defs/envName": "write the name of an environment variable, e.g. HCLOUD_TOKEN, and export "
    "the token in that variable",
    "/$defs/unixUser": "use a lowercase user name other than root, e.g. fleet",
    "/$defs/duration": "write a whole number from 1 to 999999 followed by s, m or h, e.g. 30s, "
    "10m, 1h",
    "/$defs/port": 'write a port such as "443" or a range such as "8000-8100"',
    "/$defs/dnsRecord/properties/zone": "write a lowercase domain such as example.com",
    "/$defs/dnsRecord/properties/name": 'write a record name such as "{server}" or "{server}.web"',
    "/$defs/install/properties/docker/properties/log_max_size": "write a size such as 10m or 1g",
    f"{_SYSTEM}/timezone": "write an IANA zone name such as UTC or Europe/Berlin",
    f"{_SYSTEM}/swap": "write a size such as 2G or 512M, or 0 for no swap",
    "/$defs/install/properties/agent/properties/image": "write an image reference such as "
    "registry.example.com/fleet-agent:1.0",
    "/$defs/app/properties/image": "write an image with a tag or a digest, e.g. "
    "ghcr.io/acme/web:1.4.2 or ghcr.io/acme/web@sha256:...",
    "/$defs/app/properties/env/propertyNames": "use letters, digits and '_', not starting with "
    "a digit, e.g. LOG_LEVEL",
    "/$defs/app/properties/resources/properties/memory": "write a size such as 256m or 1g",
    "/$defs/appPort": 'write "SERVER:CONTAINER", e.g. "80:8080", "127.0.0.1:9000:9000" or '
    '"53:53/udp"',
    "/$defs/appVolume": 'write "NAME:/path" or "/server/path:/path", with ":ro" at the end for '
    "read-only",
    "/$defs/appHealth/properties/http/properties/path": "write a path starting with /, e.g. "
    "/healthz",
    "/$defs/appUpdate/properties/monitor": "write a whole number up to 999999 followed by s, m "
    "or h, e.g. 30s, or 0s to watch nothing",
    "/$defs/app/properties/secret_env/items": "write the name of a variable of the engine's "
    "environment, e.g. DATABASE_URL, and export it where the engine runs",
    "/$defs/app/properties/registry/properties/username_env": "write the name of the variable "
    "holding the registry user, e.g. GHCR_USER, and export it where the engine runs",
    "/$defs/app/properties/registry/properties/password_env": "write the name of the variable "
    "holding the registry password or token, e.g. GHCR_TOKEN, and export it where the engine "
    "runs",
}
_BRANCH = re.compile(r"/anyOf/[0-9]+$")
# A sentence ends at a full stop and a space, but not at "e.g. " or "i.e. ".
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.(?:\s|$)")


@cache
def schema_nodes() -> dict[str, dict[str, Any]]:
    """Every map in the fleet schema by its JSON pointer ("" is the root)."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any, pointer: str) -> None:
        if isinstance(node, dict):
            found[pointer] = node
            for key, value in node.items():
                walk(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{pointer}/{i}")

    walk(fleet_schema(), "")
    return found


@cache
def _pointers() -> dict[int, str]:
    # By identity: jsonschema hands each error the very sub-schema of fleet_schema() that failed.
    return {id(node): pointer for pointer, node in schema_nodes().items()}


def _describe(schema: Mapping[str, Any]) -> str:
    """A hint for a schema node: its entry in SCHEMA_HINTS, else its description's first
    sentence. A node that is a branch of an anyOf, or a $ref, also speaks for its parent or
    for the definition it refers to."""
    nodes = [schema]
    pointer = _pointers().get(id(schema), "")
    if _BRANCH.search(pointer):
        nodes.append(schema_nodes()[_BRANCH.sub("", pointer)])
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        nodes.append(_definition(ref))
    for node in nodes:
        hint = SCHEMA_HINTS.get(_pointers().get(id(node), ""))
        if hint:
            return hint
    description = next((str(n["description"]) for n in nodes if n.get("description")), "")
    first = _SENTENCE_END.split(description, maxsplit=1)[0]
    if first[1:2].islower():
        first = first[:1].lower() + first[1:]
    return f"expected: {first}" if first else ""


def _yaml11_hint(value: object, types: list[str]) -> str:
    """For text that YAML 1.1 read as one of `types` (`yes`, `3_0`): what to write instead."""
    if not isinstance(value, str):
        return ""
    meant = yaml11_reading(value)
    if isinstance(meant, bool):
        if "boolean" not in types:
            return ""
        return f'write true or false: "{value}" is text in YAML 1.2, not a boolean'
    wanted = ("integer", "number") if isinstance(meant, int) else ("number",)
    if isinstance(meant, int | float) and any(t in types for t in wanted):
        return f'write {meant}: "{value}" is text in YAML 1.2, not a number'
    return ""


def _translate(error: Any, doc: Document, file: str) -> Iterator[Diagnostic]:
    path: Path = tuple(error.absolute_path)
    kind = error.validator
    schema = error.schema
    value = error.instance

    def diag(code: str, message: str, hint: str, at: Path = path, key: bool = False) -> Diagnostic:
        line, column = doc.position(at, key=key)
        shown = (*at[:-1], shown_key(at[-1])) if key else at
        return Diagnostic(
            code=code,
            message=message,
            hint=hint or "see schemas/fleet.v1.schema.json for what this field takes",
            path=render_path(shown),
            file=file,
            line=line,
            column=column,
        )

    if kind == "oneOf":
        yield from _translate_one_of(error, doc, file, diag)
    elif kind == "anyOf":
        yield from _translate_any_of(error, doc, file, diag)
    elif kind == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        for key in value:
            if key not in schema.get("properties", {}):
                hint = _suggest(key, allowed) if allowed else "remove it"
                shown = shown_key(key)
                yield diag("unknown_key", f'unknown key "{shown}"', hint, (*path, key), key=True)
    elif kind == "required":
        props = schema.get("properties", {})
        for name in error.validator_value:
            if name not in value:
                what = _describe(props.get(name, {})).removeprefix("expected: ")
                hint = f"add {name} ({what})" if what else f"add {name}"
                yield diag("missing_key", f'"{name}" is required here', hint)
    elif kind == "dependentRequired":
        props = schema.get("properties", {})
        for present, needed in error.validator_value.items():
            for name in needed:
                if present in value and name not in value:
                    what = _describe(props.get(name, {})).removeprefix("expected: ")
                    yield diag(
                        "missing_key",
                        f'"{name}" goes with "{present}"',
                        f"add {name} ({what}), or remove {present}",
                    )
    elif kind == "type":
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)
        wanted = " or ".join(_TYPE_NAMES.get(n, n) for n in names)
        hint = _yaml11_hint(value, names) or _describe(schema) or f"write {wanted} here"
        yield diag("wrong_type", f"must be {wanted}, not {_type_of(value)}", hint)
    elif kind in ("enum", "const"):
        options = error.validator_value if kind == "enum" else [error.validator_value]
        shown = ", ".join(str(o) for o in options)
        message = f"must be one of: {shown}" if kind == "enum" else f"must be {shown}"
        if kind == "enum" and isinstance(value, str) and len(value) <= 64:
            message = f'"{value}" is not allowed; {message}'
        yield diag("invalid_value", message, _suggest(value, [str(o) for o in options]))
    elif kind == "pattern" and "propertyNames" not in error.schema_path:
        message = "does not have the required form"
        if _is_safe_to_show(path, value):
            message = f'"{value}" {message}'
        yield diag("invalid_format", message, _describe(schema))
    elif kind in ("propertyNames", "pattern"):
        # jsonschema reports a bad key at its map's path, with the key as the instance (a
        # pattern the keys must match, under propertyNames, the same way).
        hint = _describe(error.validator_value if kind == "propertyNames" else schema)
        if isinstance(value, str) and "=" in value:
            hint = "write the name, a colon and the value (NAME: value), not NAME=value"
        yield diag(
            "invalid_format",
            f'the key "{shown_key(value)}" does not have the required form',
            hint,
            at=(*path, value),
            key=True,
        )
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        bound = error.validator_value
        words = {"minimum": "at least", "maximum": "at most", "exclusiveMinimum": "more than"}
        word = words.get(kind, "less than")
        yield diag("out_of_range", f"must be {word} {bound}, got {value}", _describe(schema))
    elif kind == "minLength":
        message = "must not be empty" if error.validator_value == 1 else "is too short"
        yield diag("too_short", message, _describe(schema))
    elif kind == "maxLength":
        limit = error.validator_value
        yield diag("too_long", f"is longer than {limit} characters", _describe(schema))
    elif kind in ("minItems", "minProperties"):
        yield diag("too_few", f"needs at least {error.validator_value}", _describe(schema))
    elif kind in ("maxItems", "maxProperties"):
        yield diag("too_many", f"may hold at most {error.validator_value}", _describe(schema))
    elif kind == "uniqueItems":
        yield diag("not_unique", "lists the same item twice", "remove the repeated item")
    elif kind == "not":
        yield diag("not_allowed", "this value is not allowed", _describe(schema))
    else:
        yield diag("invalid_value", error.message, _describe(schema))


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
    "null": type(None),
}


def _is_of_type(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return name == "boolean"
    return isinstance(value, _PYTHON_TYPES[name])


def _translate_any_of(error: Any, doc: Document, file: str, diag: Any) -> Iterator[Diagnostic]:
    """A value with several forms (a port is "443" or 443): report on the form whose type the
    value has; with none, say which types are wanted."""
    value = error.instance
    branches = error.validator_value
    fitting = [i for i, b in enumerate(branches) if "type" in b and _is_of_type(value, b["type"])]
    if len(fitting) == 1:
        for sub in error.context:
            if sub.relative_schema_path[0] == fitting[0]:
                yield from _translate(sub, doc, file)
        return
    types = [str(b.get("type", "")) for b in branches]
    wanted = " or ".join(
        _TYPE_NAMES[b["type"]] if "type" in b else json.dumps(b.get("const")) for b in branches
    )
    hint = _yaml11_hint(value, types) or _describe(error.schema) or f"write {wanted} here"
    yield diag("wrong_type", f"must be {wanted}, not {_type_of(value)}", hint)


def _translate_one_of(error: Any, doc: Document, file: str, diag: Any) -> Iterator[Diagnostic]:
    """`image` is a name or a map; report on the branch the user evidently meant."""
    value = error.instance
    if isinstance(value, dict):
        meant = [
            i
            for i, branch in enumerate(error.validator_value)
            if len(value) == 1 and next(iter(value)) in branch.get("properties", {})
        ]
        if meant:
            for sub in error.context:
                if sub.relative_schema_path[0] == meant[0]:
                    yield from _translate(sub, doc, file)
            return
        yield diag(
            "invalid_value",
            "an image map holds exactly one of: snapshot, custom",
            'write e.g. image: {snapshot: {labels: {golden: "web"}}}',
        )
        return
    yield diag(
        "wrong_type",
        f"must be an image name or a map with snapshot or custom, not {_type_of(value)}",
        "write e.g. image: debian-12",
    )


# --- semantic checks ---------------------------------------------------------------------


def _dicts(value: object) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(value, list):
        for i, item in enumerate(value):
            if isinstance(item, dict):
                yield i, item


# Every field that holds the NAME of an environment variable (the schema's envName), "*" for
# any list index, with what a secret pasted there is, what to export, a name to export it in,
# and what to do about the secret now in the file.
ENV_NAME_FIELDS: dict[Path, tuple[str, str, str, str]] = {
    ("provider", "token_env"): ("an API token", "the token", "HCLOUD_TOKEN", "revoke the token"),
    ("apps", "*", "secret_env", "*"): ("a secret", "the secret", "DATABASE_URL", "change it"),
    ("apps", "*", "registry", "username_env"): (
        "a credential",
        "the user name",
        "GHCR_USER",
        "revoke the credential",
    ),
    ("apps", "*", "registry", "password_env"): (
        "a registry token",
        "the token",
        "GHCR_TOKEN",
        "revoke the token",
    ),
    ("webhooks", "*", "secret_env"): (
        "a signing secret",
        "the secret",
        "FLEET_WEBHOOK_SECRET",
        "change it",
    ),
}


def is_env_name_field(path: Path) -> bool:
    """Whether `path` is a field of ENV_NAME_FIELDS, e.g. ("apps", 0, "secret_env", 1)."""
    return any(
        len(field) == len(path)
        and all(
            want == part or (want == "*" and isinstance(part, int))
            for want, part in zip(field, path, strict=True)
        )
        for field in ENV_NAME_FIELDS
    )


def _values_at(data: object, field: Path, at: Path = ()) -> Iterator[tuple[Path, object]]:
    """Each value of `data` at `field` ("*" for every item of a list), with its path."""
    if not field:
        yield at, data
    elif field[0] == "*":
        for i, item in enumerate(data if isinstance(data, list) else []):
            yield from _values_at(item, field[1:], (*at, i))
    elif isinstance(data, dict) and field[0] in data:
        yield from _values_at(data[field[0]], field[1:], (*at, field[0]))


def parse_duration(text: str) -> int:
    """Seconds in a duration such as "15s", "10m" or "1h" (already checked by the schema)."""
    return int(text[:-1]) * _DURATION_UNITS[text[-1]]


_HOST_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
_PORT = re.compile(r"[0-9]{1,5}")


def url_problem(url: str) -> str | None:
    """What keeps `url` from being an http:// or https:// address the engine can connect to,
    in a few words, or None when nothing does. Every URL field of the spec and every URL
    option of the CLI asks it, so no HTTP library meets a URL it refuses (requests raises
    InvalidURL, urlsplit(url).port a ValueError) in the middle of a run.

    >>> url_problem("https://ops.example.com:99999")
    'its port 99999 is not a number from 1 to 65535'
    """
    if any(c.isspace() or not c.isprintable() for c in url):
        return "it contains a space or a control character"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return "it does not start with http:// or https://"
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed [ or no IP address between [ and ]
        return "its host in [ ] is not an IPv6 address"
    if "@" in parts.netloc:
        return (
            "it holds a user name or password before its host (URLs are shown in plans and "
            "logs, and the control plane's is in every server's user data); leave them out"
        )
    host = parts.hostname
    if not host:
        return "it names no host"
    if not _is_host(host):
        return f"its host {host!r} is not a host name (letters, digits, '-', '.') or an IP address"
    port = parts.netloc.rpartition("]")[2].partition(":")[2]
    if port and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return f"its port {port} is not a number from 1 to 65535"
    return None


def _is_host(host: str) -> bool:
    """An IP address, or a DNS name of dot-separated labels (a final dot allowed)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        name = host.removesuffix(".")
        return len(name) <= 253 and all(_HOST_LABEL.fullmatch(p) for p in name.split("."))
    return True


class _Checks:
    """What JSON Schema cannot say: references, catalogs, provider rules, secrets."""

    def __init__(self, doc: Document, file: str, state_dir: FsPath | None) -> None:
        self.doc = doc
        self.data: dict[str, Any] = doc.data
        self.file = file
        self.state_dir = state_dir
        self.out: list[Diagnostic] = []
        provider = self.data.get("provider")
        name = provider.get("name") if isinstance(provider, dict) else None
        self.provider = name if isinstance(name, str) and name in set(ProviderName) else None
        self.catalog: Catalog | None = (
            load_catalog(self.provider, state_dir) if self.provider else None
        )
        defaults = self.data.get("defaults")
        self.defaults: dict[str, Any] = defaults if isinstance(defaults, dict) else {}

    def add(self, code: str, path: Path, message: str, hint: str, *, key: bool = False) -> None:
        line, column = self.doc.position(path, key=key)
        self.out.append(
            Diagnostic(
                code=code,
                message=message,
                hint=hint,
                path=render_path(path),
                file=self.file,
                line=line,
                column=column,
            )
        )

    def run(self) -> list[Diagnostic]:
        self.check_env_names()
        self.check_provider()
        self.check_control_plane()
        self.check_ssh()
        names = {
            section: self.check_unique_names(section)
            for section in ("groups", "firewalls", "networks", "load_balancers", "apps")
        }
        self.check_labels(("defaults", "labels"), self.defaults.get("labels"))
        self.check_catalog(None, self.defaults)
        if self.provider == ProviderName.LOCAL and "backups" in self.defaults:
            self.unsupported(("defaults", "backups"), "backups")
        for i, group in _dicts(self.data.get("groups")):
            self.check_group(i, group, names)
        self.check_firewalls()
        self.check_networks()
        self.check_load_balancers(names["groups"])
        self.check_dns(names["groups"])
        self.check_reconcile()
        self.check_alerts()
        self.check_apps(names["groups"])
        self.check_timezone()
        return self.out

    def check_timezone(self) -> None:
        """A time zone the servers' zone database cannot have fails their install, after
        they were made: it is asked of this machine's (the same IANA names), when it has one."""
        install = self.data.get("install")
        system = install.get("system") if isinstance(install, dict) else None
        zone = system.get("timezone") if isinstance(system, dict) else None
        if not isinstance(zone, str) or not re.fullmatch(
            schema_nodes()[f"{_SYSTEM}/timezone"]["pattern"], zone
        ):
            return
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

        try:
            ZoneInfo(zone)
            return
        except (ZoneInfoNotFoundError, ValueError, OSError):
            known = available_timezones()
        if not known:  # this machine has no zone database to ask
            return
        by_case = {name.lower(): name for name in known}
        close = by_case.get(zone.lower()) or next(
            iter(difflib.get_close_matches(zone, sorted(known), n=1, cutoff=0.6)), None
        )
        self.add(
            "unknown_timezone",
            ("install", "system", "timezone"),
            f'the IANA time zone database has no zone "{zone}"',
            f'did you mean "{close}"?'
            if close
            else "write a zone name such as UTC or Europe/Berlin (timedatectl list-timezones "
            "lists them)",
        )

    def check_reconcile(self) -> None:
        reconcile = self.data.get("reconcile")
        interval = reconcile.get("interval") if isinstance(reconcile, dict) else None
        is_duration = isinstance(interval, str) and re.fullmatch(r"[1-9][0-9]{0,5}[smh]", interval)
        if is_duration and parse_duration(str(interval)) < MIN_RECONCILE_INTERVAL_S:
            self.add(
                "too_frequent",
                ("reconcile", "interval"),
                f"reading the fleet every {interval} spends the provider's request budget "
                "on little",
                f"write {MIN_RECONCILE_INTERVAL_S}s or more, e.g. interval: 5m",
            )

    def check_alerts(self) -> None:
        self.check_unique_names("alerts")
        for i, alert in _dicts(self.data.get("alerts")):
            when = alert.get("when")
            if when in METRIC_ALERTS and "above" not in alert:
                self.add(
                    "missing_key",
                    ("alerts", i),
                    f"an alert on {when} needs a threshold",
                    f"add above: N (the {when} value that raises it)",
                )
            elif when in PERCENT_ALERTS and _is_percent_past_full(alert.get("above")):
                self.add(
                    "out_of_range",
                    ("alerts", i, "above"),
                    f"{when} is a percentage: an alert above {alert['above']} never fires",
                    "write a percentage below 100, e.g. above: 90",
                )
            elif when in (AlertWhen.UNHEALTHY, AlertWhen.DRIFT) and "above" in alert:
                self.add(
                    "not_applicable",
                    ("alerts", i, "above"),
                    f"an alert on {when} has no threshold",
                    "remove above, or choose cpu, memory, disk or load",
                    key=True,
                )
        for i, hook in _dicts(self.data.get("webhooks")):
            url = hook.get("url")
            if not isinstance(url, str) or not self.is_usable_url(
                ("webhooks", i, "url"),
                url,
                "/$defs/webhook/properties/url",
                "https://alerts.example.com/hook",
            ):
                continue
            if url.startswith("http://") and urllib.parse.urlsplit(url).hostname not in _LOOPBACK:
                self.add(
                    "insecure_url",
                    ("webhooks", i, "url"),
                    "alert events would travel to this address in the clear",
                    "use an https:// address (http:// is for a receiver on this host only)",
                )

    def is_usable_url(self, path: Path, url: str, pointer: str, example: str) -> bool:
        """Whether the URL at `path` is one the engine can connect to; when it is not, say so.
        A value the schema's pattern at `pointer` refuses is reported already, and is not
        usable either."""
        if not re.search(schema_nodes()[pointer]["pattern"], url):
            return False
        problem = url_problem(url)
        if problem is not None:
            self.add(
                "invalid_format",
                path,
                f"not a URL the engine can connect to: {problem}",
                f"write an address such as {example}",
            )
        return problem is None

    def unsupported(self, path: Path, what: str, *, key: bool = True) -> None:
        self.add(
            "not_applicable",
            path,
            f"{what} is not available on the {self.provider} provider",
            "remove it, or use a provider that has it",
            key=key,
        )

    def check_env_names(self) -> None:
        """A secret pasted where the name of its variable belongs: refused, never echoed."""
        for field, (what, thing, example, revoke) in ENV_NAME_FIELDS.items():
            if field == ("provider", "token_env") and self.provider == ProviderName.DIGITALOCEAN:
                example = "DIGITALOCEAN_TOKEN"
            for path, value in _values_at(self.data, field):
                if isinstance(value, str) and is_literal_token(value):
                    self.add(
                        "literal_secret",
                        path,
                        f"this looks like {what}, not the name of an environment variable",
                        f"export {thing} in a variable, e.g. export {example}=..., "
                        f"write the variable's name here, and {revoke} if this file was ever "
                        "shared",
                    )

    def check_provider(self) -> None:
        provider = self.data.get("provider")
        if not isinstance(provider, dict) or self.provider is None:
            return
        if self.provider == ProviderName.LOCAL:
            for key in ("token_env", "project", "endpoint"):
                if key in provider:
                    self.unsupported(("provider", key), key)
            return
        if isinstance(provider.get("endpoint"), str):
            self.is_usable_url(
                ("provider", "endpoint"),
                provider["endpoint"],
                "/properties/provider/properties/endpoint",
                "https://api.example.com/v1 (the provider API's base URL)",
            )
        if "token_env" not in provider:
            default = (
                "HCLOUD_TOKEN" if self.provider == ProviderName.HCLOUD else "DIGITALOCEAN_TOKEN"
            )
            self.add(
                "missing_key",
                ("provider",),
                '"token_env" is required for a cloud provider',
                f"add token_env: {default} and export your API token in that variable",
            )
        if self.provider == ProviderName.HCLOUD and "project" in provider:
            self.unsupported(("provider", "project"), "project (a token is bound to one project)")

    def check_control_plane(self) -> None:
        cp = self.data.get("control_plane")
        cp = cp if isinstance(cp, dict) else {}
        if self.provider == ProviderName.LOCAL:
            if "url" in cp:
                self.unsupported(("control_plane", "url"), "a control plane url (chosen for you)")
            return
        if self.provider is None:
            return
        url = cp.get("url")
        if isinstance(url, str) and not self.is_usable_url(
            ("control_plane", "url"),
            url,
            "/properties/control_plane/properties/url",
            "https://ops.example.com or https://ops.example.com:8443",
        ):
            return
        if cp.get("readiness") == Readiness.POLL:
            return
        if url is None:
            self.add(
                "missing_key",
                ("control_plane",) if cp else (),
                "control_plane.url is required: servers phone home to it",
                "add control_plane: {url: https://ops.example.com}, "
                "or set control_plane.readiness: poll",
            )
        elif isinstance(url, str) and url.startswith("http://"):
            self.add(
                "insecure_url",
                ("control_plane", "url"),
                "servers send their one-time token to this address in the clear",
                "use an https:// address",
            )

    def check_ssh(self) -> None:
        ssh = self.data.get("ssh")
        if not isinstance(ssh, dict):
            return
        keys = ssh.get("authorized_keys")
        if isinstance(keys, list):
            for i, key in enumerate(keys):
                if isinstance(key, str) and _PRIVATE_KEY.search(key):
                    self.add(
                        "literal_secret",
                        ("ssh", "authorized_keys", i),
                        "this is a private key; only public keys belong in a spec",
                        "remove it now, replace that key pair if the file was shared, "
                        "and paste the .pub file's line instead",
                    )
                elif isinstance(key, str) and _is_damaged_public_key(key):
                    self.add(
                        "invalid_key",
                        ("ssh", "authorized_keys", i),
                        "this public key is damaged: its base64 part does not decode to a key "
                        "of the type it names",
                        "copy the whole line again from the .pub file",
                    )
            self.check_user_data_budget(keys)
        install = self.data.get("install")
        agent = install.get("agent") if isinstance(install, dict) else None
        agent_port = agent.get("port", 7567) if isinstance(agent, dict) else 7567
        if ssh.get("port") == agent_port:
            self.add(
                "port_conflict",
                ("ssh", "port"),
                f"sshd and the agent would both listen on port {agent_port}",
                "choose another ssh.port or install.agent.port",
            )

    def check_user_data_budget(self, keys: list[Any]) -> None:
        """Every server's user_data carries all keys; providers cap its size (32 KiB)."""
        from engine.cloudinit import USER_DATA_LIMIT, UserDataError, render_user_data

        checked = [d for d in self.out if d.path.startswith("ssh.authorized_keys")]
        if self.provider is None or checked or not all(isinstance(k, str) for k in keys):
            return  # an unreadable key is reported already; the estimate needs good ones
        try:
            text = render_user_data(
                fleet="f" * 40,
                server="s" * 55,
                hostname="s" * 55,
                phone_home_url="https://" + "c" * 60 + "/v1/phone-home",
                token="t" * _TOKEN_ALLOWANCE,
                admin_user="fleet",
                authorized_keys=[*keys, _DEPLOY_KEY_ALLOWANCE],
                provider=ProviderName(self.provider),
            )
        except UserDataError:
            return  # a key the schema refuses; that is reported already
        size = len(text.encode())
        if size > USER_DATA_LIMIT:
            self.add(
                "user_data_too_large",
                ("ssh", "authorized_keys"),
                f"each server's user_data would be about {size:,} bytes; providers accept "
                f"{USER_DATA_LIMIT:,}",
                "list fewer keys (an ed25519 key costs about 100 bytes, RSA-4096 about 750)",
                key=True,
            )

    def check_unique_names(self, section: str) -> dict[str, int]:
        seen: dict[str, int] = {}
        for i, item in _dicts(self.data.get(section)):
            name = item.get("name")
            if not isinstance(name, str):
                continue
            if name in seen:
                self.add(
                    "duplicate_name",
                    (section, i, "name"),
                    f'the name "{name}" is already used by {section}[{seen[name]}]',
                    "give each entry its own name",
                )
            else:
                seen[name] = i
        return seen

    def group_field(
        self, i: int | None, group: dict[str, Any], key: str
    ) -> tuple[Any, Path | None]:
        """The group's value for `key`, else the default, with the path it was written at.

        `i` None means `group` is the defaults section itself.
        """
        if key in group:
            return group[key], ("groups", i, key) if i is not None else ("defaults", key)
        if key in self.defaults:
            return self.defaults[key], ("defaults", key)
        return None, None

    def check_group(self, i: int, group: dict[str, Any], names: dict[str, dict[str, int]]) -> None:
        built_in = PROVIDER_DEFAULTS.get(ProviderName(self.provider), {}) if self.provider else {}
        for key in ("server_type", "image", "locations"):
            if key not in group and key not in self.defaults and key not in built_in:
                self.add(
                    "missing_key",
                    ("groups", i),
                    f'"{key}" is set neither in this group nor in defaults',
                    f"add {key} to the group or to defaults",
                )
        for section, ref_key in (("firewalls", "firewalls"), ("networks", "networks")):
            refs = group.get(ref_key)
            if not isinstance(refs, list):
                continue
            for j, ref in enumerate(refs):
                if isinstance(ref, str) and ref not in names[section]:
                    self.add(
                        "unknown_reference",
                        ("groups", i, ref_key, j),
                        f'no {section[:-1]} is named "{ref}"',
                        _suggest(ref, list(names[section]))
                        if names[section]
                        else f"define it under {section}:",
                    )
        self.check_labels(("groups", i, "labels"), group.get("labels"))
        self.check_reachability(i, group)
        if self.provider == ProviderName.LOCAL and "backups" in group:
            self.unsupported(("groups", i, "backups"), "backups")
        placement = group.get("placement")
        count = group.get("count")
        if placement == Placement.SPREAD and self.provider in (
            ProviderName.DIGITALOCEAN,
            ProviderName.LOCAL,
        ):
            self.unsupported(("groups", i, "placement"), "placement: spread")
        elif (
            placement == Placement.SPREAD
            and isinstance(count, int)
            and count > HCLOUD_PLACEMENT_GROUP_MAX
        ):
            self.add(
                "placement_group_too_large",
                ("groups", i, "count"),
                f"a spread placement group holds at most {HCLOUD_PLACEMENT_GROUP_MAX} servers, "
                f"this group has {count}",
                "split the group in two, or set placement: none",
            )
        self.check_catalog(i, group)

    def check_reachability(self, i: int, group: dict[str, Any]) -> None:
        """What the providers refuse only at create time: unreachable servers, limits."""
        ipv4, ipv4_path = self.group_field(i, group, "public_ipv4")
        ipv6, _ = self.group_field(i, group, "public_ipv6")
        networks = group.get("networks")
        joins = isinstance(networks, list) and bool(networks)
        if self.provider == ProviderName.DIGITALOCEAN:
            if ipv4 is False and ipv4_path is not None:
                self.add(
                    "not_applicable",
                    ipv4_path,
                    "DigitalOcean droplets always have a public IPv4 address",
                    "remove public_ipv4: false",
                )
            if isinstance(networks, list) and len(networks) > 1:
                self.add(
                    "too_many",
                    ("groups", i, "networks"),
                    "a droplet joins exactly one VPC",
                    "list one network for this group",
                )
        elif self.provider == ProviderName.HCLOUD:
            if ipv4 is False and ipv6 is False and not joins:
                self.add(
                    "unreachable",
                    ("groups", i),
                    "these servers would have no public address and no private network",
                    "keep public_ipv4 or public_ipv6, or add the group to a network",
                )
            firewalls = group.get("firewalls")
            count = len(firewalls) if isinstance(firewalls, list) else 0
            # The engine's own firewall, and one per load balancer reaching the group over
            # the public network, count towards Hetzner's 5 firewalls per server.
            extra = 1 + sum(
                1
                for _, lb in _dicts(self.data.get("load_balancers"))
                if lb.get("targets") == group.get("name") and not joins
            )
            if count and count + extra > HCLOUD_FIREWALLS_PER_SERVER:
                self.add(
                    "too_many",
                    ("groups", i, "firewalls"),
                    f"Hetzner applies at most {HCLOUD_FIREWALLS_PER_SERVER} firewalls to a "
                    f"server and the engine adds {extra} of its own here",
                    f"list at most {HCLOUD_FIREWALLS_PER_SERVER - extra} firewalls, or merge "
                    "their rules into fewer",
                )

    def check_catalog(self, i: int | None, group: dict[str, Any]) -> None:
        catalog = self.catalog
        if catalog is None:
            return
        type_name, type_path = self.group_field(i, group, "server_type")
        server_type = None
        if isinstance(type_name, str) and type_path is not None:
            server_type = catalog.server_types.get(type_name)
            if server_type is None:
                self.add(
                    "unknown_server_type",
                    type_path,
                    f'{catalog.provider} has no server type "{type_name}"',
                    _suggest(type_name, list(catalog.server_types)),
                )
        locations, loc_path = self.group_field(i, group, "locations")
        if isinstance(locations, list) and loc_path is not None:
            for j, location in enumerate(locations):
                if not isinstance(location, str):
                    continue
                if location not in catalog.locations:
                    self.add(
                        "unknown_location",
                        (*loc_path, j),
                        f'{catalog.provider} has no location "{location}"',
                        _suggest(location, list(catalog.locations)),
                    )
                elif server_type is not None and not server_type.is_available(location):
                    offered = ", ".join(server_type.prices) or "no location"
                    self.add(
                        "unavailable",
                        (*loc_path, j),
                        f"{server_type.name} is not offered in {location}",
                        f"{server_type.name} is offered in {offered}; "
                        "pick one of those or another server type",
                    )
        image, image_path = self.group_field(i, group, "image")
        if image_path is None:
            return
        if isinstance(image, str):
            known = catalog.images.get(image)
            if known is None:
                self.add(
                    "unknown_image",
                    image_path,
                    f'{catalog.provider} has no image "{image}"',
                    _suggest(image, list(catalog.images)),
                )
            elif server_type is not None and server_type.architecture not in known.architectures:
                self.add(
                    "architecture_mismatch",
                    image_path,
                    f"{image} is not built for {server_type.architecture} "
                    f"({server_type.name}'s architecture)",
                    "pick an image for that architecture or another server type",
                )
        elif isinstance(image, dict):
            if "custom" in image and self.provider != ProviderName.DIGITALOCEAN:
                self.unsupported((*image_path, "custom"), "a custom image")
            if "snapshot" in image and self.provider == ProviderName.LOCAL:
                self.unsupported((*image_path, "snapshot"), "a snapshot image")

    def check_labels(self, path: Path, labels: object) -> None:
        if not isinstance(labels, dict) or self.provider is None:
            return
        for key, raw in labels.items():
            if not isinstance(raw, str | int | bool):
                continue  # the schema reports the type
            value = _label_text(raw)
            if is_reserved_label(key):
                self.add(
                    "reserved_label",
                    (*path, key),
                    f'the label key "{key}" is reserved for the engine\'s ownership labels',
                    "rename it; keys starting with fleet or managed-by are reserved",
                    key=True,
                )
            elif self.provider == ProviderName.DIGITALOCEAN:
                if not _DO_TAG.fullmatch(f"{key}:{value}"):
                    self.add(
                        "invalid_label",
                        (*path, key),
                        f'becomes the DigitalOcean tag "{key}:{value}", which is not valid',
                        "tags allow letters, digits, ':', '-' and '_' (no dots, slashes "
                        "or spaces), at most 255 characters",
                    )
            else:
                problem = _hcloud_label_problem(key, value)
                if problem:
                    self.add("invalid_label", (*path, key), problem[0], problem[1], key=problem[2])

    def check_firewalls(self) -> None:
        for i, firewall in _dicts(self.data.get("firewalls")):
            if self.provider == ProviderName.LOCAL:
                self.unsupported(("firewalls",), "firewalls")
                return
            for j, rule in _dicts(firewall.get("inbound")):
                path: Path = ("firewalls", i, "inbound", j)
                self.check_rule(path, rule)

    def check_rule(self, path: Path, rule: dict[str, Any]) -> None:
        protocol = rule.get("protocol")
        port = rule.get("port")
        if protocol == Protocol.ICMP and port is not None:
            self.add(
                "invalid_port",
                (*path, "port"),
                "icmp has no ports",
                "remove port from this rule",
                key=True,
            )
        elif protocol in (Protocol.TCP, Protocol.UDP) and port is None:
            self.add(
                "missing_key",
                path,
                f'"port" is required for {protocol}',
                'add port: "443" or a range such as "8000-8100"',
            )
        elif isinstance(port, str) and re.fullmatch(r"\d{1,5}(-\d{1,5})?", port):
            low, _, high = port.partition("-")
            start, end = int(low), int(high or low)
            if not (1 <= start <= end <= 65535):
                self.add(
                    "invalid_port",
                    (*path, "port"),
                    f'"{port}" is not a port or range between 1 and 65535',
                    "write the lower port first, e.g. 8000-8100",
                )
        sources = rule.get("sources")
        if isinstance(sources, list):
            for k, source in enumerate(sources):
                if isinstance(source, str):
                    self.check_cidr((*path, "sources", k), source, private=False)

    def check_cidr(self, path: Path, text: str, *, private: bool) -> None:
        try:
            network = ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                self.add(
                    "invalid_cidr",
                    path,
                    f'"{text}" is not an address range in CIDR form',
                    "write e.g. 203.0.113.0/24, 0.0.0.0/0 or ::/0",
                )
                return
            self.add(
                "invalid_cidr",
                path,
                f'"{text}" has bits set after the prefix',
                f"did you mean {loose}?",
            )
            return
        if private and (network.version != 4 or not network.is_private or network.prefixlen < 8):
            self.add(
                "invalid_cidr",
                path,
                f'"{text}" is not a private IPv4 range',
                "use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16",
            )

    def check_networks(self) -> None:
        seen: list[tuple[int, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for i, network in _dicts(self.data.get("networks")):
            if self.provider == ProviderName.LOCAL:
                self.unsupported(("networks",), "private networks")
                return
            ip_range = network.get("ip_range")
            if not isinstance(ip_range, str):
                continue
            before = len(self.out)
            self.check_cidr(("networks", i, "ip_range"), ip_range, private=True)
            if len(self.out) != before:
                continue
            current = ipaddress.ip_network(ip_range)
            for j, other in seen:
                if current.overlaps(other):
                    self.add(
                        "overlapping_networks",
                        ("networks", i, "ip_range"),
                        f"{current} overlaps {other} of networks[{j}]",
                        "give each network its own range",
                    )
            seen.append((i, current))

    def check_load_balancers(self, groups: dict[str, int]) -> None:
        for i, lb in _dicts(self.data.get("load_balancers")):
            if self.provider == ProviderName.LOCAL:
                self.unsupported(("load_balancers",), "load balancers")
                return
            self.check_target(("load_balancers", i, "targets"), lb.get("targets"), groups)
            lb_type = lb.get("type")
            catalog = self.catalog
            if catalog and isinstance(lb_type, str) and lb_type not in catalog.load_balancer_types:
                self.add(
                    "unknown_server_type",
                    ("load_balancers", i, "type"),
                    f'{catalog.provider} has no load balancer type "{lb_type}"',
                    _suggest(lb_type, list(catalog.load_balancer_types)),
                )
            location = lb.get("location")
            if catalog and isinstance(location, str) and location not in catalog.locations:
                self.add(
                    "unknown_location",
                    ("load_balancers", i, "location"),
                    f'{catalog.provider} has no location "{location}"',
                    _suggest(location, list(catalog.locations)),
                )
            target = lb.get("targets")
            if (
                self.provider == ProviderName.DIGITALOCEAN
                and isinstance(location, str)
                and isinstance(target, str)
                and target in groups
            ):
                group = dict(_dicts(self.data.get("groups")))[groups[target]]
                where, _ = self.group_field(groups[target], group, "locations")
                if isinstance(where, list) and location not in where:
                    self.add(
                        "unavailable",
                        ("load_balancers", i, "location"),
                        f"no server of {target} runs in {location}; a DigitalOcean load "
                        "balancer reaches droplets in its own region only",
                        f"use one of {target}'s locations: {', '.join(map(str, where))}",
                    )
            listens: set[int] = set()
            for j, service in _dicts(lb.get("services")):
                listen = service.get("listen")
                if isinstance(listen, int) and listen in listens:
                    self.add(
                        "port_conflict",
                        ("load_balancers", i, "services", j, "listen"),
                        f"port {listen} is listened on twice",
                        "give each service its own listen port",
                    )
                if isinstance(listen, int):
                    listens.add(listen)

    def check_target(self, path: Path, target: object, groups: dict[str, int]) -> None:
        if isinstance(target, str) and target not in groups:
            self.add(
                "unknown_reference",
                path,
                f'no group is named "{target}"',
                _suggest(target, list(groups)),
            )

    def check_dns(self, groups: dict[str, int]) -> None:
        group_data = dict(_dicts(self.data.get("groups")))
        for i, record in _dicts(self.data.get("dns")):
            if self.provider != ProviderName.DIGITALOCEAN:
                self.unsupported(("dns",), "dns (provider-hosted zones)")
                return
            target = record.get("targets")
            self.check_target(("dns", i, "targets"), target, groups)
            name, zone = record.get("name"), record.get("zone")
            if not (isinstance(name, str) and isinstance(zone, str) and isinstance(target, str)):
                continue
            group = group_data.get(groups.get(target, -1), {})
            count = group.get("count")
            if "{server}" not in name and isinstance(count, int) and count > 1:
                self.add(
                    "dns_name_collision",
                    ("dns", i, "name"),
                    f"all {count} servers of {target} would get the same record name",
                    'put {server} in the name, e.g. "{server}.' + name + '"',
                )
            longest = name.replace("{server}", f"{target}-{count or 1}") + "." + zone
            if len(longest) > 253 or any(len(p) > 63 for p in longest.split(".")):
                self.add(
                    "too_long",
                    ("dns", i, "name"),
                    f"{longest} is longer than DNS allows (63 per label, 253 in all)",
                    "shorten the record name",
                )

    def check_apps(self, groups: dict[str, int]) -> None:
        published: dict[tuple[str, str, int], str] = {}
        for i, app in _dicts(self.data.get("apps")):
            on = app.get("on")
            targets = [g for g in on if isinstance(g, str)] if isinstance(on, list) else []
            for j, group in enumerate(on if isinstance(on, list) else []):
                self.check_target(("apps", i, "on", j), group, groups)
            self.check_app_env(i, app)
            self.check_app_ports(i, app, [g for g in targets if g in groups], published)
            self.check_app_volumes(i, app)
            self.check_app_health(i, app)
            self.check_app_resources(i, app, [g for g in targets if g in groups])

    def check_app_resources(self, i: int, app: dict[str, Any], groups: list[str]) -> None:
        """A limit Docker refuses, or one above what the app's smallest server has (Docker
        refuses more CPUs than the server has; memory past it only fails later)."""
        resources = app.get("resources")
        resources = resources if isinstance(resources, dict) else {}
        memory, cpu = resources.get("memory"), resources.get("cpu")
        memory_mb = (
            _memory_mb(memory) if isinstance(memory, str) and _APP_MEMORY.fullmatch(memory) else 0
        )
        if memory_mb and memory_mb < _MIN_MEMORY_MB:
            self.add(
                "out_of_range",
                ("apps", i, "resources", "memory"),
                f"{memory} is less than Docker lets a container have",
                f"give it at least {_MIN_MEMORY_MB}m",
            )
        kinds = self._server_types(groups)
        if not kinds:
            return
        group, kind = min(kinds, key=lambda k: k[1].memory_gb)
        if memory_mb > kind.memory_gb * 1024:
            self.add(
                "out_of_range",
                ("apps", i, "resources", "memory"),
                f"the servers of {group} ({kind.name}) have {kind.memory_gb:g} GB of memory; "
                f"a container on them cannot have {memory}",
                f"give it at most {int(kind.memory_gb * 1024)}m, or run it on larger servers",
            )
        group, kind = min(kinds, key=lambda k: k[1].cores)
        if isinstance(cpu, int | float) and not isinstance(cpu, bool) and cpu > kind.cores:
            self.add(
                "out_of_range",
                ("apps", i, "resources", "cpu"),
                f"the servers of {group} ({kind.name}) have {kind.cores} CPU(s); Docker "
                f"refuses a container on them {cpu:g} CPUs",
                f"give it at most {kind.cores}, or run it on larger servers",
            )

    def _server_types(self, groups: list[str]) -> list[tuple[str, ServerType]]:
        """Each of `groups` whose server type the catalog knows, with that type."""
        found: list[tuple[str, ServerType]] = []
        for _, group in _dicts(self.data.get("groups")):
            name = group.get("name")
            kind = group.get("server_type", self.defaults.get("server_type"))
            if name in groups and self.catalog is not None and isinstance(kind, str):
                known = self.catalog.server_types.get(kind)
                if known is not None:
                    found.append((str(name), known))
        return found

    def check_app_env(self, i: int, app: dict[str, Any]) -> None:
        env = app.get("env")
        env = env if isinstance(env, dict) else {}
        for key, value in env.items():
            if isinstance(value, str) and value and _looks_secret(key, value):
                self.add(
                    "literal_secret",
                    ("apps", i, "env", key),
                    f"{key} looks like a secret, and env values are in the spec, in git and "
                    "in every plan",
                    f"move it to secret_env: [{key}] and export {key}=... where the engine "
                    "runs; change the secret if this file was ever shared",
                    key=True,
                )
        for key, value in env.items():
            if isinstance(value, str) and "\0" in value:
                self.add(
                    "invalid_value",
                    ("apps", i, "env", key),
                    f"the value of {shown_key(str(key))} holds a NUL character (\\0), which "
                    "no environment variable can",
                    "remove it from the value",
                )
        secrets = app.get("secret_env")
        for j, name in enumerate(secrets if isinstance(secrets, list) else []):
            if isinstance(name, str) and name in env:
                self.add(
                    "duplicate_name",
                    ("apps", i, "secret_env", j),
                    f"{name} is in env too",
                    "keep the variable in one of env and secret_env",
                )

    def check_app_ports(
        self,
        i: int,
        app: dict[str, Any],
        groups: list[str],
        published: dict[tuple[str, str, int], str],
    ) -> None:
        ssh = self.data.get("ssh")
        install = self.data.get("install")
        agent = install.get("agent") if isinstance(install, dict) else None
        taken = {
            (ssh.get("port", 22) if isinstance(ssh, dict) else 22): "sshd",
            (agent.get("port", 7567) if isinstance(agent, dict) else 7567): "the agent",
        }
        ports = app.get("ports")
        for j, text in enumerate(ports if isinstance(ports, list) else []):
            if not isinstance(text, str) or not _APP_PORT.fullmatch(text):
                continue  # the schema reports it
            port = _app_port(text)
            path: Path = ("apps", i, "ports", j)
            if not all(1 <= p <= 65535 for p in (port.host_port, port.container_port)):
                self.add(
                    "invalid_port",
                    path,
                    f'"{text}" names a port outside 1-65535',
                    'write ports between 1 and 65535, e.g. "80:8080"',
                )
                continue
            if port.host_ip is not None and not _is_ipv4(port.host_ip):
                self.add(
                    "invalid_port",
                    path,
                    f'"{port.host_ip}" is not an IPv4 address',
                    'write an address such as 127.0.0.1, or leave it out: "80:8080"',
                )
                continue
            if port.protocol is Protocol.TCP and port.host_port in taken:
                self.add(
                    "port_conflict",
                    path,
                    f"{taken[port.host_port]} listens on port {port.host_port} of every server",
                    "publish the app on another server port",
                )
            for group in groups:
                key = (group, str(port.protocol), port.host_port)
                other = published.setdefault(key, f"apps[{i}].ports[{j}]")
                if other != f"apps[{i}].ports[{j}]":
                    self.add(
                        "port_conflict",
                        path,
                        f"port {port.host_port}/{port.protocol} of {group}'s servers is "
                        f"published by {other} already",
                        "give each app its own server port",
                    )
                    break

    def check_app_volumes(self, i: int, app: dict[str, Any]) -> None:
        volumes = app.get("volumes")
        for j, text in enumerate(volumes if isinstance(volumes, list) else []):
            if not isinstance(text, str) or not _APP_VOLUME.fullmatch(text):
                continue
            volume = _app_volume(text)
            is_path = volume.source.startswith("/")
            if (is_path and "/../" in f"{volume.source}/") or "/../" in f"{volume.target}/":
                self.add(
                    "invalid_value",
                    ("apps", i, "volumes", j),
                    f'"{text}" has ".." in a path',
                    "write the paths without '..'",
                )
            elif not is_path and not _VOLUME_NAME.fullmatch(volume.source):
                self.add(
                    "invalid_value",
                    ("apps", i, "volumes", j),
                    f'"{volume.source}" is neither a volume name nor an absolute path',
                    "name a volume with letters, digits, '_', '.' and '-', or give a path "
                    "starting with /",
                )

    def check_app_health(self, i: int, app: dict[str, Any]) -> None:
        health = app.get("health")
        if not isinstance(health, dict):
            return
        kinds = [k for k in HealthKind if k in health]
        if not kinds:
            self.add(
                "missing_key",
                ("apps", i, "health"),
                "a health check needs one of http, tcp or command",
                "add e.g. http: {path: /healthz, port: 8080}",
            )
        elif len(kinds) > 1:
            self.add(
                "invalid_value",
                ("apps", i, "health", kinds[1]),
                f"a health check is one of http, tcp or command, not {' and '.join(kinds)}",
                f"keep one of {', '.join(kinds)}",
                key=True,
            )


_APP_PORT = re.compile(
    r"(?:([0-9]{1,3}(?:\.[0-9]{1,3}){3}):)?([0-9]{1,5}):([0-9]{1,5})(?:/(tcp|udp))?"
)
_APP_VOLUME = re.compile(r"([^:\s]+):(/[^:\s]*)(?::(ro|rw))?")
_APP_MEMORY = re.compile(r"([1-9][0-9]{0,6})([mg])")
_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_MIN_MEMORY_MB = 6  # Docker refuses a smaller limit
_SECRET_NAME = re.compile(r"(?i)(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|CREDENTIALS?)$")
_URL_PASSWORD = re.compile(r"://[^/:@\s]+:[^/@\s]+@")


def _looks_secret(name: str, value: str) -> bool:
    """An env entry whose name says it is a secret, or a URL carrying a password."""
    return bool(_SECRET_NAME.search(name) or _URL_PASSWORD.search(value))


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _app_port(text: str) -> AppPort:
    """`[ADDRESS:]SERVER:CONTAINER[/PROTOCOL]`, already matched by the schema's pattern."""
    match = _APP_PORT.fullmatch(text)
    assert match is not None
    address, host, container, protocol = match.groups()
    return AppPort(
        host_port=int(host),
        container_port=int(container),
        protocol=Protocol(protocol or "tcp"),
        host_ip=address,
    )


def _app_volume(text: str) -> AppVolume:
    match = _APP_VOLUME.fullmatch(text)
    assert match is not None
    source, target, mode = match.groups()
    return AppVolume(source=source, target=target, read_only=mode == "ro")


def _memory_mb(text: str) -> int:
    match = _APP_MEMORY.fullmatch(text)
    assert match is not None
    return int(match[1]) * (1024 if match[2] == "g" else 1)


def _is_damaged_public_key(line: str) -> bool:
    """A key line whose blob does not decode, or names another type than the line does."""
    parts = line.split()
    if len(parts) < 2 or parts[0] not in _KEY_TYPES:
        return False  # the schema's pattern reports a malformed line
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        return True
    if len(blob) < 4:
        return True
    length = int.from_bytes(blob[:4], "big")
    return blob[4 : 4 + length] != parts[0].encode()


def _label_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _hcloud_label_problem(key: str, value: str) -> tuple[str, str, bool] | None:
    prefix, slash, name = key.rpartition("/")
    if (slash and not _HCLOUD_LABEL_PREFIX.fullmatch(prefix)) or not _HCLOUD_LABEL_NAME.fullmatch(
        name
    ):
        return (
            f'"{key}" is not a valid label key',
            "keys are at most 63 letters, digits, '-', '_' or '.', starting and ending with "
            "a letter or digit, optionally after a DNS prefix and '/'",
            True,
        )
    if not _HCLOUD_LABEL_VALUE.fullmatch(value):
        return (
            f'"{value}" is not a valid label value',
            "values are empty or at most 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit",
            False,
        )
    return None


# --- model -------------------------------------------------------------------------------


def _labels(raw: object) -> Labels:
    if not isinstance(raw, dict):
        return ()
    return tuple(sorted((str(k), _label_text(v)) for k, v in raw.items()))


def _image(raw: object) -> Image:
    if isinstance(raw, str):
        return Image(kind=ImageKind.NAME, name=raw)
    assert isinstance(raw, dict)
    if "snapshot" in raw:
        return Image(kind=ImageKind.SNAPSHOT, labels=_labels(raw["snapshot"]["labels"]))
    return Image(kind=ImageKind.CUSTOM, name=raw["custom"])


def _group(raw: dict[str, Any], defaults: dict[str, Any]) -> Group:
    def pick(key: str, fallback: Any = None) -> Any:
        return raw.get(key, defaults.get(key, fallback))

    labels = {**(defaults.get("labels") or {}), **(raw.get("labels") or {})}
    return Group(
        name=raw["name"],
        count=raw["count"],
        server_type=pick("server_type"),
        image=_image(pick("image")),
        locations=tuple(pick("locations")),
        placement=Placement(raw.get("placement", Placement.NONE)),
        firewalls=tuple(raw.get("firewalls", ())),
        networks=tuple(raw.get("networks", ())),
        labels=_labels(labels),
        backups=bool(pick("backups", False)),
        public_ipv4=bool(pick("public_ipv4", True)),
        public_ipv6=bool(pick("public_ipv6", True)),
    )


def _health(raw: dict[str, Any] | None) -> AppHealth | None:
    if raw is None:
        return None
    timing = {
        "interval_s": parse_duration(raw.get("interval", "5s")),
        "timeout_s": parse_duration(raw.get("timeout", "2s")),
        "retries": raw.get("retries", 3),
    }
    if "http" in raw:
        http = raw["http"]
        return AppHealth(
            kind=HealthKind.HTTP, port=http["port"], path=http.get("path", "/"), **timing
        )
    if "tcp" in raw:
        return AppHealth(kind=HealthKind.TCP, port=raw["tcp"]["port"], **timing)
    return AppHealth(kind=HealthKind.COMMAND, command=tuple(raw["command"]), **timing)


def _app(raw: dict[str, Any]) -> App:
    update = raw.get("update", {})
    resources = raw.get("resources", {})
    registry = raw.get("registry")
    command = raw.get("command")
    return App(
        name=raw["name"],
        image=raw["image"],
        on=tuple(raw["on"]),
        command=None if command is None else tuple(command),
        env=_labels(raw.get("env")),
        secret_env=tuple(raw.get("secret_env", ())),
        ports=tuple(_app_port(p) for p in raw.get("ports", ())),
        volumes=tuple(_app_volume(v) for v in raw.get("volumes", ())),
        restart=RestartPolicy(raw.get("restart", RestartPolicy.UNLESS_STOPPED)),
        cpus=resources.get("cpu"),
        memory_mb=_memory_mb(resources["memory"]) if "memory" in resources else None,
        health=_health(raw.get("health")),
        update=AppUpdate(
            max_unavailable=update.get("max_unavailable", 1),
            health_timeout_s=parse_duration(update.get("health_timeout", "60s")),
            monitor_s=parse_duration(update.get("monitor", "30s")),
            rollback=RollbackMode(update.get("rollback", RollbackMode.AUTO)),
        ),
        registry=None
        if registry is None
        else RegistryAuth(
            username_env=registry["username_env"], password_env=registry["password_env"]
        ),
    )


def _port(raw: object) -> str | None:
    return None if raw is None else str(raw)


def _build_fleet(data: dict[str, Any], file: str) -> Fleet:
    provider = data["provider"]
    cp = data.get("control_plane", {})
    ssh = data.get("ssh", {})
    install = data.get("install", {})
    docker = install.get("docker", {})
    system = install.get("system", {})
    agent = install.get("agent", {})
    limits = data.get("limits", {})
    reconcile = data.get("reconcile", {})
    defaults = {
        **PROVIDER_DEFAULTS.get(ProviderName(provider["name"]), {}),
        **data.get("defaults", {}),
    }
    return Fleet(
        name=data["name"],
        description=data.get("description", ""),
        source=file,
        provider=Provider(
            name=ProviderName(provider["name"]),
            token_env=provider.get("token_env"),
            project=provider.get("project"),
            endpoint=provider.get("endpoint"),
        ),
        control_plane=ControlPlane(
            url=cp.get("url"),
            readiness=Readiness(cp.get("readiness", Readiness.PHONE_HOME)),
            token_ttl_s=parse_duration(cp.get("token_ttl", "1h")),
            phone_home_timeout_s=parse_duration(cp.get("phone_home_timeout", "10m")),
            verify_source_ip=cp.get("verify_source_ip", True),
        ),
        ssh=Ssh(
            authorized_keys=tuple(ssh.get("authorized_keys", ())),
            user=ssh.get("user", "fleet"),
            port=ssh.get("port", 22),
        ),
        groups=tuple(_group(g, defaults) for g in data["groups"]),
        firewalls=tuple(
            Firewall(
                name=f["name"],
                inbound=tuple(
                    FirewallRule(
                        protocol=Protocol(r["protocol"]),
                        port=_port(r.get("port")),
                        sources=tuple(r["sources"]),
                        description=r.get("description", ""),
                        public=r.get("exposure") == "public",
                        reason=r.get("reason", ""),
                    )
                    for r in f.get("inbound", ())
                ),
            )
            for f in data.get("firewalls", ())
        ),
        networks=tuple(
            Network(name=n["name"], ip_range=n["ip_range"]) for n in data.get("networks", ())
        ),
        load_balancers=tuple(
            LoadBalancer(
                name=lb["name"],
                targets=lb["targets"],
                type=lb.get("type"),
                location=lb.get("location"),
                services=tuple(
                    LbService(
                        listen=s["listen"],
                        destination=s["destination"],
                        protocol=LbProtocol(s.get("protocol", LbProtocol.TCP)),
                    )
                    for s in lb["services"]
                ),
            )
            for lb in data.get("load_balancers", ())
        ),
        dns=tuple(
            DnsRecord(
                zone=r["zone"],
                name=r["name"],
                targets=r["targets"],
                type=r.get("type", "A"),
                ttl=r.get("ttl", 300),
            )
            for r in data.get("dns", ())
        ),
        install=Install(
            docker=DockerInstall(
                source=DockerSource(docker.get("source", DockerSource.DOCKER_CE)),
                log_max_size=docker.get("log_max_size", "10m"),
                log_max_files=docker.get("log_max_files", 3),
                live_restore=docker.get("live_restore", True),
            ),
            system=SystemInstall(
                timezone=system.get("timezone", "UTC"),
                swap=str(system.get("swap", "0")),
                unattended_upgrades=system.get("unattended_upgrades", True),
                sysctl=_labels(system.get("sysctl")),
            ),
            agent=AgentInstall(
                port=agent.get("port", 7567),
                heartbeat_s=parse_duration(agent.get("heartbeat", "15s")),
                image=agent.get("image"),
            ),
        ),
        limits=Limits(
            servers=limits.get("servers"),
            vcpus=limits.get("vcpus"),
            memory_gb=limits.get("memory_gb"),
            disk_gb=limits.get("disk_gb"),
            monthly_cost=limits.get("monthly_cost"),
        ),
        reconcile=Reconcile(
            interval_s=parse_duration(reconcile.get("interval", "5m")),
            mode=ReconcileMode(reconcile.get("mode", ReconcileMode.REPORT)),
            repairs_per_hour=reconcile.get("repairs_per_hour", 10),
        ),
        alerts=tuple(
            Alert(
                name=a["name"],
                when=AlertWhen(a["when"]),
                above=a.get("above"),
                for_s=parse_duration(a["for"]) if "for" in a else 0,
            )
            for a in data.get("alerts", ())
        ),
        webhooks=tuple(
            Webhook(url=w["url"], secret_env=w["secret_env"]) for w in data.get("webhooks", ())
        ),
        apps=tuple(_app(a) for a in data.get("apps", ())),
    )


def _is_percent_past_full(value: Any) -> bool:
    """Whether `value` is a number (not a bool, which YAML reads from yes/no) of 100 or more:
    a threshold no percentage can pass."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 100
