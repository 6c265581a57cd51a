"""Refusals the control plane answers with: an HTTP status, a stable code, a message.

Every error body is `{"error": {"code": ..., "message": ..., "fields": [{"path", "message"}]}}`
(`fields` only for a body or query that failed validation; a fleet spec that failed validation
has `errors` instead, each with code, path, line, column, message and hint, as `engine
validate` reports them); 429 and 503 carry Retry-After.

    400 malformed_json, body_too_deep, bad_header, body_incomplete (never readable)
    401 unauthenticated, token_invalid, token_expired, api_key_invalid
    403 token_wrong_fleet, token_wrong_server, instance_mismatch, source_address_mismatch,
        forbidden (the API key's scope or fleet grants do not allow it)
    404 not_found, fleet_not_found, server_not_found, spec_not_found, plan_not_found,
        run_not_found, group_not_found
    405 method_not_allowed
    409 token_spent, host_keys_conflict, server_deleting, plan_stale, plan_blocked,
        count_not_plain
    413 body_too_large     415 unsupported_media_type
    422 invalid_body, invalid_query, invalid_spec, cannot_plan
    429 rate_limited       503 not_ready (try again: the control plane cannot decide yet),
                           no_planner (a control plane inside `engine up` takes no plans)

A server's phone-home program stops for good on a 4xx other than 429, so a 4xx means the
request can never succeed; anything that may sort itself out (a server not registered yet,
an instance the provider does not list yet) is a 503 with Retry-After.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import EngineError


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str


class ApiError(EngineError):
    """An answer other than success, with what the client needs to know and nothing more."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        fields: Sequence[FieldError] = (),
        errors: Sequence[Mapping[str, Any]] = (),
        extra: Mapping[str, Any] | None = None,
        retry_after_s: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = tuple(fields)
        self.errors = tuple(errors)
        self.extra = dict(extra or {})
        self.retry_after_s = retry_after_s

    def body(self) -> dict[str, object]:
        error: dict[str, object] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = [{"path": f.path, "message": f.message} for f in self.fields]
        if self.errors:
            error["errors"] = [dict(e) for e in self.errors]
        return {"error": error, **self.extra}

    def headers(self) -> dict[str, str]:
        headers = {}
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        if self.status == 401:  # RFC 6750: which scheme, and whether a token was sent
            sent = self.code != "unauthenticated"
            headers["WWW-Authenticate"] = 'Bearer error="invalid_token"' if sent else "Bearer"
        return headers
