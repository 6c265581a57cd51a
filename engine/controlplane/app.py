"""The control plane's HTTP API (Starlette), built by `create_app`.

    GET  /v1/health                     no auth; {"status": "ok"}
    POST /v1/phone-home                 one-time phone-home token   (engine.controlplane.phonehome)
    POST /v1/heartbeat                  the agent's heartbeat token
    POST /v1/agent-events               the agent's heartbeat token
    GET  /v1/servers?fleet=F            API key
    GET  /v1/servers/{name}?fleet=F     API key
    GET  /v1/events?fleet=F[&server=S][&after=ID][&limit=N]   API key

Every other route is 404. API keys go in `Authorization: Bearer fek_...`; each key has a
token bucket (100 requests a second, bursts of 200 by default) and a request over it gets
429 with Retry-After. Source addresses whose requests keep being refused are slowed down the
same way: every error answer (4xx or 5xx, whatever gave it) spends a token of its source's
bucket, so a client cannot probe for free with requests that fail before a token is checked.
Bodies are JSON, limited in size (413 past it) and in nesting depth (400 past 32 levels,
found before any parser recurses), checked against their schema (422 with one entry per bad
field). Errors are described in engine.controlplane.errors.

Tokens only ever travel in the Authorization header, which nothing here logs; the logging
filter installed by `install_log_redaction` masks any bearer token and registered secret in
uvicorn's and the engine's log records anyway.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.controlplane.apikeys import ApiKeyVerifier
from engine.controlplane.bodies import check_body, compile_checks, parse_json
from engine.controlplane.errors import ApiError, FieldError
from engine.controlplane.lookup import InventoryLookup
from engine.controlplane.phonehome import PhoneHomeService
from engine.controlplane.ratelimit import RateLimiter
from engine.controlplane.views import (
    MetricsSource,
    event_document,
    last_heartbeat_metrics,
    server_document,
)
from engine.model import Stage
from engine.secrets import RedactingFilter, redact
from engine.state import AgentReport, PhoneHomeOutcome
from engine.state.store import Store
from engine.tokens import TokenPurpose, expected_token, is_same_token

log = logging.getLogger("engine.controlplane")

HEARTBEAT_PURPOSE = TokenPurpose.HEARTBEAT
PHONE_HOME_MAX_BYTES = 64 * 1024
HEARTBEAT_MAX_BYTES = 1024 * 1024
EVENT_MAX_BYTES = 64 * 1024
# Logger filters do not see records propagated from child loggers: name every one we use.
_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "engine",
    "engine.controlplane",
    "engine.controlplane.jobs",
    "engine.controlplane.handlers",
    "engine.controlplane.monitor",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    """How the API behaves; the defaults are the documented ones."""

    state_dir: Path
    api_rate_per_s: float = 100.0
    api_burst: int = 200
    # Refused requests per source address: a fleet booting behind one NAT is refused rarely
    # (a 503 while it is not registered yet), a scanner is refused all the time.
    failure_rate_per_s: float = 2.0
    failure_burst: int = 50
    inventory_min_interval_s: float = 5.0


def install_log_redaction() -> None:
    """Mask bearer tokens and registered secrets in uvicorn's and the engine's logs, and in
    whatever the root logger's handlers write."""
    filterers: list[logging.Filterer] = [logging.getLogger(name) for name in _LOGGERS]
    filterers += logging.getLogger().handlers
    for filterer in filterers:
        if not any(isinstance(f, RedactingFilter) for f in filterer.filters):
            filterer.addFilter(RedactingFilter())


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(401, "unauthenticated", "send the token as `Authorization: Bearer <token>`")
    return value.strip()


async def _read_json(request: Request, limit: int) -> Any:
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        if not length.isdigit():
            raise ApiError(400, "bad_header", "Content-Length is not a number")
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return parse_json(b"".join(chunks))


def _source(request: Request) -> str:
    return request.client.host if request.client else ""


class ControlPlaneApi:
    """The routes' state: the store, the checkers and the rate limiters."""

    def __init__(
        self,
        store: Store,
        settings: AppSettings,
        *,
        lookup: InventoryLookup | None = None,
        metrics: MetricsSource = last_heartbeat_metrics,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.lookup = lookup or InventoryLookup(min_interval_s=settings.inventory_min_interval_s)
        self.phone_home = PhoneHomeService(store, settings.state_dir, self.lookup)
        self.api_keys = ApiKeyVerifier(store)
        self.api_limiter = RateLimiter(settings.api_rate_per_s, settings.api_burst)
        self.failure_limiter = RateLimiter(settings.failure_rate_per_s, settings.failure_burst)
        # Called when a request enqueued a job (an accepted phone-home: its install), so that
        # job workers in this process start on it now (running_control_plane sets it).
        self.jobs_enqueued: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Finish the writes still queued (call it once the server stopped taking requests)."""
        self.phone_home.close()

    # --- servers talking to us -------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def _check_failures(self, source: str) -> None:
        if self.failure_limiter.remaining(source) < 1:
            raise ApiError(
                429,
                "rate_limited",
                "too many refused requests from this address",
                retry_after_s=max(1, round(1 / self.settings.failure_rate_per_s)),
            )

    def count_refusal(self, request: Request) -> None:
        """Spend a token of the source address's bucket of refused requests."""
        self.failure_limiter.take(_source(request))

    async def post_phone_home(self, request: Request) -> Response:
        source = _source(request)
        self._check_failures(source)
        token = _bearer(request)
        body = check_body("phone-home", await _read_json(request, PHONE_HOME_MAX_BYTES))
        answer = await self.phone_home.handle(token, body, source)
        if answer.outcome is PhoneHomeOutcome.ACCEPTED:
            self.jobs_enqueued()
        return JSONResponse({"status": str(answer.outcome), "server": answer.server})

    def _check_agent(self, token: str, fleet: str, server: str) -> None:
        key: bytes | None = self.phone_home.keys.get(fleet)
        if key is None or not is_same_token(
            expected_token(key, HEARTBEAT_PURPOSE, fleet, server), token
        ):
            raise ApiError(401, "token_invalid", "the heartbeat token does not verify")
        if self.store.servers.get(fleet, server) is None:
            raise ApiError(404, "server_not_found", f"fleet {fleet} has no server {server}")

    def _heartbeat(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        fleet, server = body["fleet"], body["server"]
        self._check_agent(token, fleet, server)
        before = self.store.servers.get(fleet, server)
        record = self.store.agents.record_heartbeat(
            AgentReport(
                fleet=fleet,
                server=server,
                last_heartbeat_at=dt.datetime.now(dt.UTC),
                sequence=int(body.get("sequence", 0)),
                metrics=body["metrics"],
                containers=body["containers"],
                tls_fingerprint=body["tls_fingerprint"],
            )
        )
        if before is not None and before.stage != record.stage and record.stage is Stage.READY:
            self.store.events.record(
                fleet, "server.ready", f"{server} is ready: its agent reports", server=server
            )
        return {"status": "ok", "stage": str(record.stage)}

    async def post_heartbeat(self, request: Request) -> Response:
        self._check_failures(_source(request))
        token = _bearer(request)
        body = check_body("heartbeat", await _read_json(request, HEARTBEAT_MAX_BYTES))
        return JSONResponse(await run_in_threadpool(self._heartbeat, token, body))

    def _agent_event(self, token: str, body: dict[str, Any]) -> dict[str, Any]:
        fleet, server = body["fleet"], body["server"]
        self._check_agent(token, fleet, server)
        container = body["container"]
        name = container.get("name") or container.get("id", "")[:12] or "?"
        recorded = self.store.agents.record_event(
            fleet,
            server,
            body["event_id"],
            f"container.{body['event']}",
            f"{server}: container {name} {body['event']}",
            {k: body[k] for k in ("event_id", "time", "container", "exit_code") if k in body},
        )
        return {"status": "recorded" if recorded else "duplicate"}

    async def post_agent_event(self, request: Request) -> Response:
        self._check_failures(_source(request))
        token = _bearer(request)
        body = check_body("agent-event", await _read_json(request, EVENT_MAX_BYTES))
        return JSONResponse(await run_in_threadpool(self._agent_event, token, body))

    # --- the fleet API ---------------------------------------------------------------------

    def _authorize(self, request: Request) -> dict[str, str]:
        """Check the API key and spend a token of its bucket; the rate-limit headers."""
        key = self.api_keys.verify(_bearer(request))
        if key is None:
            raise ApiError(401, "api_key_invalid", "this API key is unknown or revoked")
        wait = self.api_limiter.take(key.key_id)
        if wait is not None:
            error = ApiError(
                429, "rate_limited", "this API key's request budget is spent", retry_after_s=wait
            )
            raise error
        return {
            "RateLimit-Limit": str(int(self.settings.api_rate_per_s)),
            "RateLimit-Remaining": str(self.api_limiter.remaining(key.key_id)),
        }

    def _fleet_query(self, request: Request) -> str:
        fleet = request.query_params.get("fleet")
        if not fleet:
            raise ApiError(
                422,
                "invalid_query",
                "say which fleet",
                fields=[FieldError("fleet", "required: ?fleet=NAME")],
            )
        if self.store.fleets.get(fleet) is None:
            raise ApiError(404, "fleet_not_found", f"this control plane serves no fleet {fleet}")
        return fleet

    def _servers(self, fleet: str) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        transitions = self.store.servers.transitions(fleet)
        reports = {r.server: r for r in self.store.agents.reports(fleet)}
        return {
            "fleet": fleet,
            "servers": [
                server_document(
                    record, transitions, reports.get(record.name), now=now, metrics=self.metrics
                )
                for record in self.store.servers.all(fleet)
            ],
        }

    async def get_servers(self, request: Request) -> Response:
        self._check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        return JSONResponse(await run_in_threadpool(self._servers, fleet), headers=headers)

    def _server(self, fleet: str, name: str) -> dict[str, Any]:
        record = self.store.servers.get(fleet, name)
        if record is None:
            raise ApiError(404, "server_not_found", f"fleet {fleet} has no server {name}")
        return server_document(
            record,
            self.store.servers.transitions(fleet, name),
            self.store.agents.report(fleet, name),
            now=dt.datetime.now(dt.UTC),
            metrics=self.metrics,
        )

    async def get_server(self, request: Request) -> Response:
        self._check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        name = request.path_params["name"]
        return JSONResponse(await run_in_threadpool(self._server, fleet, name), headers=headers)

    async def get_events(self, request: Request) -> Response:
        self._check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        query = request.query_params
        fields = []
        after = query.get("after", "0")
        limit = query.get("limit", "100")
        if not after.isdigit():
            fields.append(FieldError("after", "a whole number >= 0 (an event id)"))
        if not limit.isdigit() or not 1 <= int(limit) <= 1000:
            fields.append(FieldError("limit", "a whole number from 1 to 1000"))
        if fields:
            raise ApiError(422, "invalid_query", "the query is not valid", fields=fields)
        events = await run_in_threadpool(
            self.store.events.all,
            fleet,
            server=query.get("server"),
            after_id=int(after),
            limit=int(limit),
        )
        return JSONResponse(
            {"fleet": fleet, "events": [event_document(e) for e in events]}, headers=headers
        )


# Every error answer leaves through one of these three handlers, which is where it is counted.


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    request.app.state.api.count_refusal(request)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    request.app.state.api.count_refusal(request)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(
        {"error": {"code": code, "message": str(error.detail)}}, status_code=error.status_code
    )


async def _internal_error(request: Request, error: Exception) -> Response:
    request.app.state.api.count_refusal(request)
    log.error("%s %s failed: %s", request.method, request.url.path, redact(repr(error)))
    return JSONResponse(
        {"error": {"code": "internal", "message": "the control plane failed; see its log"}},
        status_code=500,
    )


def create_app(
    store: Store,
    settings: AppSettings,
    *,
    lookup: InventoryLookup | None = None,
    metrics: MetricsSource = last_heartbeat_metrics,
) -> Starlette:
    """The control plane's ASGI app over `store` (which the caller opens and closes)."""
    api = ControlPlaneApi(store, settings, lookup=lookup, metrics=metrics)
    compile_checks()
    api.phone_home.warm()
    install_log_redaction()
    app = Starlette(
        routes=[
            Route("/v1/health", api.health, methods=["GET"]),
            Route("/v1/phone-home", api.post_phone_home, methods=["POST"]),
            Route("/v1/heartbeat", api.post_heartbeat, methods=["POST"]),
            Route("/v1/agent-events", api.post_agent_event, methods=["POST"]),
            Route("/v1/servers", api.get_servers, methods=["GET"]),
            Route("/v1/servers/{name}", api.get_server, methods=["GET"]),
            Route("/v1/events", api.get_events, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.api = api
    return app
