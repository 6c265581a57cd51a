"""The gate in front of every route: header and body size limits, bearer token, audit log.

It is plain ASGI and runs before routing, so an unauthenticated request learns nothing, not
even whether a route exists. Only `GET /v1/health` is open. The token is compared as its
SHA-256 against the stored digest with hmac.compare_digest (constant time, equal lengths);
the agent never holds the token itself. Bodies are read up to the limit before the app sees
them, so an oversized request is refused whole (413) and changes nothing; so is one nesting
arrays and objects deeper than any body needs (400), measured in one pass before json (here
or in the app) recurses through it. Every mutating call and every refused token goes to the
audit log as one JSON line, without secrets: the body is recorded as its SHA-256 plus a few
fields that identify what was touched.

One route takes a body too big to hold: POST /v1/images/load, an image archive. It is passed
on as it arrives (a declared Content-Length over `max_stream_bytes` is refused first), counted
and hashed for the audit; the route itself stops reading at that limit.

The guard's own refusals are `{"detail": <message>, "code": <stable code>}`:

    400 body_too_deep    401 unauthenticated    413 body_too_large    431 headers_too_large
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from fleet_agent.metrics import timestamp

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_ROUTES = frozenset({("GET", "/v1/health")})
STREAMED_ROUTES = frozenset({("POST", "/v1/images/load")})
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_TOKEN_BYTES = 1024
MAX_HEADER_BYTES = 16 * 1024
# The bodies need three levels; json and pydantic recurse once per level.
MAX_JSON_DEPTH = 32
# Body fields that name what a call touched; everything else (env, command) may hold secrets.
AUDITED_FIELDS = ("image", "name", "network", "subnet", "dangling_only")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AuditLog:
    """Append-only JSON lines, rotated at `max_bytes` keeping `backups` old files."""

    def __init__(self, path: Path, *, max_bytes: int = 10 * 1024 * 1024, backups: int = 3):
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def record(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":"), sort_keys=True) + "\n"
        if self.path.exists() and self.path.stat().st_size + len(line) > self.max_bytes:
            self._rotate()
        with self.path.open("a", encoding="utf-8") as out:
            out.write(line)
        self.path.chmod(0o600)

    def _rotate(self) -> None:
        for n in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value)
    return None


_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*(?:"|\Z)')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def is_nested_deeper(body: bytes, limit: int) -> bool:
    """Whether the JSON `body` nests arrays and objects more than `limit` levels deep.

    Read as json.loads reads bytes, in one pass without recursion, brackets inside strings
    ignored: escapes go first (so `\\"` ends no string), then strings, then all that is not a
    bracket. On a body that is not JSON it may find more depth than json.loads reaches, never
    less: json.loads stops at the first error, and up to there both read alike. The control
    plane measures its bodies the same way (engine.controlplane.bodies; the agent is a package
    of its own).
    """
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError:
        return False  # not JSON at all: the app refuses it
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


async def _reply(
    send: Send, status: int, code: str, detail: str, headers: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: data[k] for k in AUDITED_FIELDS if isinstance(data.get(k), str | bool | int)}


class Guard:
    """ASGI middleware: authenticate, bound the body, audit; see the module docstring."""

    def __init__(
        self,
        app: App,
        *,
        token_sha256: str,
        max_body_bytes: int,
        audit: AuditLog,
        max_stream_bytes: int = 0,
    ):
        self.app = app
        self.token_sha256 = token_sha256
        self.max_body_bytes = max_body_bytes
        self.max_stream_bytes = max_stream_bytes
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.time()
        method, path = scope["method"], scope["path"]
        entry = {
            "time": timestamp(started),
            "remote": (scope.get("client") or ("", 0))[0],
            "method": method,
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
        }
        if sum(len(k) + len(v) for k, v in scope.get("headers", ())) > MAX_HEADER_BYTES:
            await _reply(
                send,
                431,
                "headers_too_large",
                f"the request headers are larger than {MAX_HEADER_BYTES} bytes",
                [],
            )
            return
        if (method, path) not in OPEN_ROUTES and not self._is_authorised(scope):
            self.audit.record({**entry, "status": 401, "event": "refused-token"})
            await _reply(
                send,
                401,
                "unauthenticated",
                "a valid bearer token is required",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        if (method, path) in STREAMED_ROUTES:
            await self._pass_stream(scope, receive, send, entry, started)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            if method in MUTATING_METHODS:
                self.audit.record({**entry, "status": 413, "event": "body-too-large"})
            await _reply(
                send,
                413,
                "body_too_large",
                f"the request body is larger than {self.max_body_bytes} bytes",
                [],
            )
            return
        if is_nested_deeper(body, MAX_JSON_DEPTH):
            if method in MUTATING_METHODS:
                self.audit.record({**entry, "status": 400, "event": "body-too-deep"})
            await _reply(
                send,
                400,
                "body_too_deep",
                f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} levels deep",
                [],
            )
            return
        status = 500
        pending: bytes | None = body

        async def replay() -> Message:
            nonlocal pending
            if pending is not None:
                message = {"type": "http.request", "body": pending, "more_body": False}
                pending = None
                return message
            return await receive()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, replay, watch)
        finally:
            if method in MUTATING_METHODS:
                self.audit.record(
                    {
                        **entry,
                        "status": status,
                        "event": "call",
                        "duration_ms": round(1000 * (time.time() - started), 1),
                        "body_sha256": hashlib.sha256(body).hexdigest() if body else None,
                        **_body_fields(body),
                    }
                )

    async def _pass_stream(
        self, scope: Scope, receive: Receive, send: Send, entry: dict[str, Any], started: float
    ) -> None:
        """Hand a streamed body on as it arrives, counting and hashing it for the audit."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_stream_bytes:
            self.audit.record({**entry, "status": 413, "event": "body-too-large"})
            await _reply(
                send,
                413,
                "body_too_large",
                f"the request body is larger than {self.max_stream_bytes} bytes",
                [],
            )
            return
        digest = hashlib.sha256()
        size = 0
        status = 500

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                size += len(chunk)
                digest.update(chunk)
            return message

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, counted, watch)
        finally:
            self.audit.record(
                {
                    **entry,
                    "status": status,
                    "event": "call",
                    "duration_ms": round(1000 * (time.time() - started), 1),
                    "body_sha256": digest.hexdigest() if size else None,
                    "body_bytes": size,
                }
            )

    def _is_authorised(self, scope: Scope) -> bool:
        header = _header(scope, b"authorization")
        if header is None or len(header) > MAX_TOKEN_BYTES + 7:
            return False
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        return hmac.compare_digest(token_digest(token.strip()), self.token_sha256)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, or None when it is over the limit (by header or by count)."""
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away; the app sees an empty body and finds out
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)
