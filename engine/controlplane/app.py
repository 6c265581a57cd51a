"""The control plane's HTTP API (Starlette), built by `create_app`.

    GET  /v1/health                     no auth; {"status": "ok" | "degraded", "degraded": [...]}
    POST /v1/phone-home                 one-time phone-home token   (engine.controlplane.phonehome)
    POST /v1/heartbeat                  the agent's heartbeat token
    POST /v1/agent-events               the agent's heartbeat token
    GET  /v1/servers?fleet=F            API key
    GET  /v1/servers/{name}?fleet=F     API key
    GET  /v1/events?fleet=F[&server=S][&after=ID][&limit=N]   API key
    GET  /v1/fleets/{fleet}/servers/{name}/metrics[?since=6h][&step=5m]   API key
    /, /sign-in, /fleets/...            the dashboard's pages (engine serve; a session cookie)

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
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route

from engine.controlplane.apikeys import ApiKeyVerifier, permit
from engine.controlplane.bodies import check_body, compile_checks, read_json
from engine.controlplane.dashboard import Dashboard, SignInLinks
from engine.controlplane.errors import ApiError, FieldError
from engine.controlplane.fleetapi import FLEET_EVENTS_QUERY, RUNS_QUERY, FleetApi, FleetPlanner
from engine.controlplane.lookup import InventoryLookup
from engine.controlplane.openapi import Endpoint, openapi_document
from engine.controlplane.phonehome import PhoneHomeService
from engine.controlplane.query import INTEGER_MAX, WholeNumber, query_numbers
from engine.controlplane.ratelimit import RateLimiter
from engine.controlplane.views import (
    MetricsSource,
    event_document,
    last_heartbeat_metrics,
    server_document,
    stored_server,
)
from engine.model import Stage
from engine.secrets import RedactingFilter, redact
from engine.state import AgentReport, ApiKey, PhoneHomeOutcome, Scope
from engine.state.metrics import HISTORY, heartbeat_values, network_rates
from engine.state.store import Store
from engine.tokens import TokenPurpose, expected_token, is_same_token

log = logging.getLogger("engine.controlplane")

HEARTBEAT_PURPOSE = TokenPurpose.HEARTBEAT
EVENTS_QUERY = {
    "after": WholeNumber(default=0, low=0, high=INTEGER_MAX),
    "limit": WholeNumber(default=100, low=1, high=1000),
}
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
    "engine.reconcile",
    "engine.serve",
)


# What else is degraded, in a few words each ("fleet web-prod: no reconcile for 12 min").
HealthSource = Callable[[], Sequence[str]]


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
        health: HealthSource | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.health_source = health
        self.lookup = lookup or InventoryLookup(min_interval_s=settings.inventory_min_interval_s)
        self.phone_home = PhoneHomeService(store, settings.state_dir, self.lookup)
        self.api_keys = ApiKeyVerifier(store, settings.state_dir)
        self.api_limiter = RateLimiter(settings.api_rate_per_s, settings.api_burst)
        self.failure_limiter = RateLimiter(settings.failure_rate_per_s, settings.failure_burst)
        # Called when a request enqueued a job (an accepted phone-home: its install), so that
        # job workers in this process start on it now (running_control_plane sets it).
        self.jobs_enqueued: Callable[[], None] = lambda: None

    def close(self) -> None:
        """Finish the writes still queued (call it once the server stopped taking requests)."""
        self.phone_home.close()

    # --- servers talking to us -------------------------------------------------------------

    def _degraded(self) -> tuple[int, list[str]]:
        try:
            self.store.schema_version()
        except Exception as error:  # whatever the driver raises: the store is what is down
            return 503, [redact(f"the state store cannot be read: {error}")]
        return 200, list(self.health_source() if self.health_source else ())

    async def health(self, request: Request) -> Response:
        """200 while the store answers (with what else is degraded, if anything); 503 when
        it does not."""
        status, degraded = await run_in_threadpool(self._degraded)
        body = {"status": "degraded" if degraded else "ok", "degraded": degraded}
        return JSONResponse(body, status_code=status)

    def check_failures(self, source: str) -> None:
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
        self.check_failures(source)
        token = _bearer(request)
        body = check_body("phone-home", await read_json(request, PHONE_HOME_MAX_BYTES))
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
        record_at = dt.datetime.now(dt.UTC)
        # The report and its history together: one commit, and neither without the other.
        with self.store.transaction() as tx:
            previous = tx.agents.report(fleet, server)
            record = tx.agents.record_heartbeat(
                AgentReport(
                    fleet=fleet,
                    server=server,
                    last_heartbeat_at=record_at,
                    sequence=int(body.get("sequence", 0)),
                    metrics=body["metrics"],
                    containers=body["containers"],
                    tls_fingerprint=body["tls_fingerprint"],
                )
            )
            values = heartbeat_values(body["metrics"])
            if previous is not None:
                values |= network_rates(previous.metrics, body["metrics"])
            tx.metrics.record(fleet, server, record_at, values)
        if before is not None and before.stage != record.stage and record.stage is Stage.READY:
            self.store.events.record(
                fleet, "server.ready", f"{server} is ready: its agent reports", server=server
            )
        return {"status": "ok", "stage": str(record.stage)}

    async def post_heartbeat(self, request: Request) -> Response:
        self.check_failures(_source(request))
        token = _bearer(request)
        body = check_body("heartbeat", await read_json(request, HEARTBEAT_MAX_BYTES))
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
        self.check_failures(_source(request))
        token = _bearer(request)
        body = check_body("agent-event", await read_json(request, EVENT_MAX_BYTES))
        return JSONResponse(await run_in_threadpool(self._agent_event, token, body))

    # --- the fleet API ---------------------------------------------------------------------

    def _authorize(self, request: Request) -> dict[str, str]:
        """Check the API key may read the fleet the query names and spend a token of its
        bucket; the rate-limit headers."""
        return self.authorize(request, Scope.READ, request.query_params.get("fleet"))[1]

    def authorize(
        self, request: Request, needed: Scope, fleet: str | None
    ) -> tuple[ApiKey, dict[str, str]]:
        """The API key, with a token of its bucket spent and checked for `needed` on `fleet`
        (403 when it may not); and the rate-limit headers."""
        key, headers = self.authenticate(request)
        permit(key, needed, fleet)
        return key, headers

    def authenticate(self, request: Request) -> tuple[ApiKey, dict[str, str]]:
        """The API key (401 unless it is live), with a token of its bucket spent (429 when
        there is none); and the rate-limit headers."""
        key = self.api_keys.verify(_bearer(request))
        if key is None:
            raise ApiError(401, "api_key_invalid", "this API key is unknown or revoked")
        wait = self.api_limiter.take(key.key_id)
        if wait is not None:
            error = ApiError(
                429, "rate_limited", "this API key's request budget is spent", retry_after_s=wait
            )
            raise error
        return key, {
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
        self.check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        return JSONResponse(await run_in_threadpool(self._servers, fleet), headers=headers)

    def _server(self, fleet: str, name: str) -> dict[str, Any]:
        return stored_server(self.store, fleet, name, metrics=self.metrics)

    async def get_server(self, request: Request) -> Response:
        self.check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        name = request.path_params["name"]
        return JSONResponse(await run_in_threadpool(self._server, fleet, name), headers=headers)

    async def get_events(self, request: Request) -> Response:
        self.check_failures(_source(request))
        headers = self._authorize(request)
        fleet = self._fleet_query(request)
        numbers = query_numbers(request.query_params, EVENTS_QUERY)
        events = await run_in_threadpool(
            self.store.events.all,
            fleet,
            server=request.query_params.get("server"),
            after_id=numbers["after"],
            limit=numbers["limit"],
        )
        return JSONResponse(
            {"fleet": fleet, "events": [event_document(e) for e in events]}, headers=headers
        )

    def _metrics(self, fleet: str, name: str, since: dt.datetime, step_s: int) -> dict[str, Any]:
        if self.store.fleets.get(fleet) is None:
            raise ApiError(404, "fleet_not_found", f"this control plane serves no fleet {fleet}")
        if self.store.servers.get(fleet, name) is None:
            raise ApiError(404, "server_not_found", f"fleet {fleet} has no server {name}")
        points = self.store.metrics.series(fleet, name, since=since, step_s=step_s)
        return {
            "fleet": fleet,
            "server": name,
            "since": since.isoformat(),
            "step_s": points[0].step_s if points else step_s,
            "points": [{"at": p.at.isoformat(), "samples": p.samples, **p.values} for p in points],
        }

    async def get_metrics(self, request: Request) -> Response:
        """A server's metric history: ?since= (an ISO time, or a duration back from now such
        as 6h; at most 30d back; default 1h) and ?step= (a duration of whole minutes up to
        30d; default 1m)."""
        self.check_failures(_source(request))
        _, headers = self.authorize(request, Scope.READ, request.path_params["fleet"])
        since, step_s = metrics_query(request.query_params, dt.datetime.now(dt.UTC))
        document = await run_in_threadpool(
            self._metrics, request.path_params["fleet"], request.path_params["name"], since, step_s
        )
        return JSONResponse(document, headers=headers)


def metrics_query(query: Mapping[str, str], now: dt.datetime) -> tuple[dt.datetime, int]:
    """`since` and `step` of a metrics request, or a 422 naming the bad field: `since` no
    further back than the history goes (metrics.HISTORY) and not after `now`, `step` whole
    minutes and no longer than the history."""
    fields = []
    since_text, step_text = query.get("since", "1h"), query.get("step", "1m")
    days = HISTORY.days
    out_of_range = FieldError(
        "since",
        f"from {days}d back to now (the metric history keeps {days} days), "
        f"e.g. 6h or {now - dt.timedelta(hours=6):%Y-%m-%dT%H:%MZ}",
    )
    since = now
    back_s = _duration_s(since_text)
    if back_s is not None:
        if back_s <= HISTORY.total_seconds():
            since = now - dt.timedelta(seconds=back_s)
        else:
            fields.append(out_of_range)
    else:
        try:
            since = dt.datetime.fromisoformat(since_text)
        except ValueError:
            fields.append(FieldError("since", "an ISO 8601 time or a duration such as 6h"))
        else:
            if since.tzinfo is None:
                fields.append(FieldError("since", "give the time zone, e.g. 2026-11-05T10:00Z"))
            elif not now - HISTORY <= since <= now:
                fields.append(out_of_range)
    step_s = _duration_s(step_text) or 0
    if not 60 <= step_s <= HISTORY.total_seconds() or step_s % 60:
        fields.append(
            FieldError(
                "step",
                f"a duration of whole minutes from 1m to {days}d (the metric history's length), "
                "such as 15m or 1h",
            )
        )
    if fields:
        raise ApiError(422, "invalid_query", "the query is not valid", fields=fields)
    return since, step_s


def _duration_s(text: str) -> int | None:
    """The seconds of a duration such as 90s, 15m, 6h or 30d; None when `text` is not one."""
    if re.fullmatch(r"[1-9][0-9]{0,5}[smhd]", text) is None:
        return None
    return int(text[:-1]) * _UNIT_S[text[-1]]


_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# Every error answer leaves through one of these three handlers, which is where it is counted.


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    request.app.state.api.count_refusal(request)
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers())


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    request.app.state.api.count_refusal(request)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    message, headers = str(error.detail), dict(error.headers or {})
    if error.status_code == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        message = f"{request.method} is not allowed here; use {' or '.join(allowed)}"
    return JSONResponse(
        {"error": {"code": code, "message": message}},
        status_code=error.status_code,
        headers=headers,
    )


def _allowed_methods(request: Request) -> list[str]:
    """The methods of every route at the request's path (one route per method here, so the
    router's own Allow names only the first route's)."""
    methods: set[str] = set()
    for route in request.app.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


async def _internal_error(request: Request, error: Exception) -> Response:
    request.app.state.api.count_refusal(request)
    log.error("%s %s failed: %s", request.method, request.url.path, redact(repr(error)))
    return JSONResponse(
        {"error": {"code": "internal", "message": "the control plane failed; see its log"}},
        status_code=500,
    )


def endpoints(api: ControlPlaneApi, fleets: FleetApi) -> list[Endpoint]:
    """Every route of the app, as served and as documented."""
    # The document is made once: a route cannot change while the app runs.
    document: list[dict[str, Any]] = []

    async def get_openapi(request: Request) -> Response:
        return JSONResponse(document[0])

    read, plan, apply = Scope.READ, Scope.PLAN, Scope.APPLY
    f = "/v1/fleets/{fleet}"
    table = [
        Endpoint(method="GET", path="/v1/health", handler=api.health, auth="none",
                 summary="Whether the control plane answers, and what is degraded (503: its "
                 "store does not answer)", answers={200: "Health", 503: "Health"}),
        Endpoint(method="GET", path="/v1/openapi.json", handler=get_openapi, auth="none",
                 summary="This document"),
        Endpoint(method="POST", path="/v1/phone-home", handler=api.post_phone_home,
                 auth="phoneHomeToken", body="PhoneHome", errors=(401, 403, 409, 503),
                 summary="A server that booted says so, once"),
        Endpoint(method="POST", path="/v1/heartbeat", handler=api.post_heartbeat,
                 auth="heartbeatToken", body="Heartbeat", errors=(401, 404),
                 summary="An agent's heartbeat with its metrics and containers"),
        Endpoint(method="POST", path="/v1/agent-events", handler=api.post_agent_event,
                 auth="heartbeatToken", body="AgentEvent", errors=(401, 404),
                 summary="A container event seen by an agent"),
        Endpoint(method="GET", path="/v1/servers", handler=api.get_servers, scope=read,
                 answers={200: "Servers"}, errors=(404, 422), query=(("fleet", "the fleet"),),
                 summary="A fleet's servers (also at /v1/fleets/{fleet}/servers)"),
        Endpoint(method="GET", path="/v1/servers/{name}", handler=api.get_server, scope=read,
                 answers={200: "Server"}, errors=(404, 422), query=(("fleet", "the fleet"),),
                 summary="One server"),
        Endpoint(method="GET", path="/v1/events", handler=api.get_events, scope=read,
                 answers={200: "Events"}, errors=(404, 422),
                 query=(("fleet", "the fleet"), ("server", "only this server's"),
                        ("after", "events after this id"), ("limit", "at most this many")),
                 numbers=EVENTS_QUERY,
                 summary="A fleet's events (also at /v1/fleets/{fleet}/events)"),
        Endpoint(method="GET", path="/v1/fleets", handler=fleets.get_fleets, scope=read,
                 answers={200: "Fleets"}, summary="The fleets the key may read"),
        Endpoint(method="GET", path=f, handler=fleets.get_fleet, scope=read,
                 answers={200: "Fleet"}, errors=(404,), summary="One fleet"),
        Endpoint(method="PUT", path=f, handler=fleets.put_fleet, scope=plan, body="FleetSpec",
                 answers={200: "SpecStored", 201: "SpecStored"},
                 summary="Register the fleet's spec (its desired state), checked as "
                 "`engine validate` checks it"),
        Endpoint(method="POST", path=f"{f}/plans", handler=fleets.post_plan, scope=plan,
                 answers={201: "SavedPlan"}, errors=(404, 422, 503),
                 summary="Make a plan from what exists now"),
        Endpoint(method="GET", path=f"{f}/plans/{{plan}}", handler=fleets.get_plan,
                 scope=read, answers={200: "SavedPlan"}, errors=(404,), summary="A plan"),
        Endpoint(method="POST", path=f"{f}/plans/{{plan}}/apply", handler=fleets.post_apply,
                 scope=apply, answers={202: "Run"}, errors=(404, 409, 422, 503),
                 summary="Apply exactly this plan (409 if the spec or the world changed)"),
        Endpoint(method="PATCH", path=f"{f}/groups/{{group}}", handler=fleets.patch_group,
                 scope=apply, body="Scale", answers={202: "ScaleStarted"},
                 errors=(404, 409, 503), summary="Scale a group: a plan and its apply"),
        Endpoint(method="GET", path=f"{f}/servers", handler=fleets.get_servers, scope=read,
                 answers={200: "Servers"}, errors=(404,), summary="The fleet's servers"),
        Endpoint(method="GET", path=f"{f}/servers/{{name}}", handler=fleets.get_server,
                 scope=read, answers={200: "Server"}, errors=(404,), summary="One server"),
        Endpoint(method="POST", path=f"{f}/servers/{{name}}/actions",
                 handler=fleets.post_server_action, scope=apply, body="ServerAction",
                 answers={202: "Run"}, errors=(404,), summary="Reboot, power off or on, "
                 "rebuild or snapshot a server"),
        Endpoint(method="GET", path=f"{f}/servers/{{name}}/metrics", handler=api.get_metrics,
                 scope=read, answers={200: "Metrics"}, errors=(404, 422),
                 query=(("since", "an ISO time or a duration back from now, e.g. 6h, at "
                         f"most {HISTORY.days}d (1h)"),
                        ("step", "whole minutes between points, e.g. 15m, at most "
                         f"{HISTORY.days}d (1m)")),
                 summary="A server's metric history from its heartbeats"),
        Endpoint(method="GET", path=f"{f}/events", handler=fleets.get_events, scope=read,
                 answers={200: "Events"}, errors=(404, 422),
                 query=(("since", "events after this id"),
                        ("wait", "seconds to wait for one (long-poll, at most 30)"),
                        ("server", "only this server's"), ("limit", "at most this many")),
                 numbers=FLEET_EVENTS_QUERY, summary="The fleet's events"),
        Endpoint(method="GET", path=f"{f}/runs", handler=fleets.get_runs, scope=read,
                 answers={200: "Runs"}, errors=(404, 422), query=(("limit", "at most"),),
                 numbers=RUNS_QUERY,
                 summary="The fleet's latest runs"),
        Endpoint(method="GET", path=f"{f}/runs/{{run}}", handler=fleets.get_run, scope=read,
                 answers={200: "Run"}, errors=(404,),
                 summary="A run: status, progress and per-step timings"),
    ]  # fmt: skip
    document.append(openapi_document(table))
    return table


def create_app(
    store: Store,
    settings: AppSettings,
    *,
    lookup: InventoryLookup | None = None,
    metrics: MetricsSource = last_heartbeat_metrics,
    planner: FleetPlanner | None = None,
    health: HealthSource | None = None,
    dashboard: bool = False,
    sign_in_links: SignInLinks | None = None,
) -> Starlette:
    """The control plane's ASGI app over `store` (which the caller opens and closes); with a
    `planner`, the fleet API makes plans (`engine serve`; a control plane inside one `engine
    up` has none); `health` says what else is degraded; with `dashboard`, the dashboard's
    pages are served at `/` (engine.controlplane.dashboard), and `sign_in_links` are the
    one-time links it takes (`engine dashboard` issues them)."""
    api = ControlPlaneApi(store, settings, lookup=lookup, metrics=metrics, health=health)
    fleets = FleetApi(api, settings.state_dir, planner)
    compile_checks()
    api.phone_home.warm()
    install_log_redaction()
    routes = [Route(e.path, e.handler, methods=[e.method]) for e in endpoints(api, fleets)]
    if dashboard:
        routes += Dashboard(store, settings.state_dir, fleets, api, sign_in_links).routes()
    app = Starlette(
        routes=routes,
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    # No redirect of /path/ to /path: Starlette builds its Location from the Host header.
    app.router.redirect_slashes = False
    app.state.api = api
    return app
