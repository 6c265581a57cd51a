"""The write half of the fleet API, under /v1/fleets: specs, plans, applies, scaling, server
actions, and the reads that go with them.

    PUT   /v1/fleets/{fleet}                         plan   the spec (YAML or JSON) -> desired state
    POST  /v1/fleets/{fleet}/plans                   plan   201: a plan id and the plan's JSON
    POST  /v1/fleets/{fleet}/plans/{id}/apply        apply  202: a run; 409 if anything changed
    PATCH /v1/fleets/{fleet}/groups/{group}          apply  {"count": N}: a plan and its apply
    POST  /v1/fleets/{fleet}/servers/{name}/actions  apply  {"action": "reboot"}: a run
    GET   /v1/fleets[/{fleet}[/servers[/{name}]|/events|/runs[/{id}]|/plans/{id}]]   read

A spec is checked exactly as `engine validate` checks a file: a bad one is a 422 whose
`error.errors[]` carry code, path, line, column, message and hint, and nothing is stored.

A plan is what `engine preview --format json` prints, made from what the provider and the
agents say now (through the `FleetPlanner` seam, which the orchestration layer implements).
It is saved with two digests: the spec's and the world's (what was observed). Its apply is a
job the control plane's workers run through `engine up`'s own path; the request is refused
with 409 when the stored spec or the world no longer match the plan's digests, and the job
checks again under the fleet's lock, so a plan is applied exactly as it was shown, or not at
all (the run ends `stale`); a run that finds the stored spec the plan's and nothing left to
change (an apply of the same spec queued before it did it) has nothing to do. A run's progress
and per-step timings are at GET /v1/fleets/{fleet}/runs/{id}; `run.*` events mark its start
and end in the events stream.

Every write is in the audit trail (who: the key's name; what; the status and result), and
none of it holds a secret: bodies are not kept.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from engine.controlplane.apikeys import permit
from engine.controlplane.bodies import read_body, read_json
from engine.controlplane.errors import ApiError, FieldError
from engine.controlplane.query import INTEGER_MAX, WholeNumber, query_numbers
from engine.controlplane.views import MetricsSource, event_document, server_document, stored_server
from engine.errors import EngineError, SpecError
from engine.model import Fleet
from engine.providers.seam import Signal
from engine.state import (
    ApiKey,
    AuditEntry,
    Event,
    FleetSpec,
    NewJob,
    Run,
    RunStatus,
    SavedPlan,
    Scope,
)
from engine.state.store import Store

APPLY_JOB = "fleet-apply"
SERVER_ACTION_JOB = "server-action"
SERVER_ACTIONS = tuple(str(signal) for signal in Signal)
SPEC_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "application/json")
SPEC_MAX_BYTES = 1024 * 1024
ACTION_MAX_BYTES = 4096
LONG_POLL_MAX_S = 30
LONG_POLL_STEP_S = 0.25
FLEET_EVENTS_QUERY = {
    "since": WholeNumber(default=0, low=0, high=INTEGER_MAX),
    "wait": WholeNumber(default=0, low=0, high=LONG_POLL_MAX_S),
    "limit": WholeNumber(default=100, low=1, high=1000),
}
RUNS_QUERY = {"limit": WholeNumber(default=20, low=1, high=100)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Planned:
    """A plan made now: its JSON (as `engine preview --format json`), the digest of what was
    observed to make it, and whether it changes anything or is blocked."""

    document: Mapping[str, Any]
    world_digest: str
    has_changes: bool
    blocked: bool


class Gate(Protocol):
    """What the fleet API uses of the control plane's app (engine.controlplane.app's
    ControlPlaneApi): its store, its metrics, its keys and limiters."""

    store: Store
    metrics: MetricsSource

    def check_failures(self, source: str) -> None: ...

    def authenticate(self, request: Request) -> tuple[ApiKey, dict[str, str]]: ...

    def authorize(
        self, request: Request, needed: Scope, fleet: str | None
    ) -> tuple[ApiKey, dict[str, str]]: ...


class FleetPlanner(Protocol):
    """Makes a fleet's plan from what exists now (engine.remote implements it)."""

    def plan(self, fleet: Fleet) -> Planned: ...


def spec_digest(text: str) -> str:
    """The SHA-256 of a spec's text: what a plan's apply checks the stored spec against."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan_changes(document: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A plan document's changes as (action, server) pairs, in order."""
    return [(c["action"], c["server"]) for c in document.get("changes", [])]


def apply_job(run_id: str, fleet: str) -> NewJob:
    """The job that carries out run `run_id` (an apply) on `fleet`."""
    return NewJob(
        kind=APPLY_JOB,
        fleet=fleet,
        key=f"{APPLY_JOB}/{run_id}",
        payload={"run": run_id},
        max_attempts=1,
    )


def _iso(at: dt.datetime | None) -> str | None:
    return None if at is None else at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def run_document(run: Run) -> dict[str, Any]:
    """One run: status, request, progress lines, result (with per-step timings), error."""
    return {
        "id": run.id,
        "fleet": run.fleet,
        "kind": run.kind,
        "status": str(run.status),
        "plan_id": run.plan_id,
        "request": dict(run.request),
        "created_at": _iso(run.created_at),
        "created_by": run.created_by,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "progress": [dict(line) for line in run.progress],
        "result": dict(run.result),
        "error": run.error,
    }


def _plan_document(plan: SavedPlan) -> dict[str, Any]:
    return {
        "id": plan.id,
        "fleet": plan.fleet,
        "created_at": _iso(plan.created_at),
        "created_by": plan.created_by,
        "spec_digest": plan.spec_digest,
        "world_digest": plan.world_digest,
        "plan": dict(plan.document),
    }


def _new_id() -> str:
    return secrets.token_hex(8)


def group_count_max() -> int:
    """The most servers a group may have, as the fleet spec's schema says."""
    from engine.spec import fleet_schema

    most: int = fleet_schema()["$defs"]["group"]["properties"]["count"]["maximum"]
    return most


async def wait_for_events(
    store: Store, fleet: str, *, server: str | None, since: int, wait_s: float, limit: int
) -> tuple[Event, ...]:
    """The fleet's events after the id `since`, waiting up to `wait_s` for one (long-poll)."""
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        events = await run_in_threadpool(
            store.events.all, fleet, server=server, after_id=since, limit=limit
        )
        if events or asyncio.get_running_loop().time() >= deadline:
            return events
        # The store is written by other processes too: nothing here can wake us but a look.
        await asyncio.sleep(LONG_POLL_STEP_S)


class FleetApi:
    """The /v1/fleets routes over the control plane's store, keys and limiter."""

    def __init__(self, api: Gate, state_dir: Path, planner: FleetPlanner | None) -> None:
        self.api = api
        self.store: Store = api.store
        self.state_dir = state_dir
        self.planner = planner

    # --- plumbing ---------------------------------------------------------------------------

    def _key(self, request: Request, needed: Scope) -> tuple[ApiKey, dict[str, str], str]:
        self.api.check_failures(request.client.host if request.client else "")
        fleet = request.path_params.get("fleet")
        key, headers = self.api.authorize(request, needed, fleet)
        return key, headers, fleet or ""

    def _writer(
        self, request: Request, needed: Scope
    ) -> tuple[ApiKey, dict[str, str], str, _Audit]:
        """A write's key (a 401 or 429 is not audited: there is nobody to name) and its audit,
        which records the outcome when its block ends; `audit.permit()` checks the scope."""
        self.api.check_failures(request.client.host if request.client else "")
        fleet = request.path_params.get("fleet", "")
        key, headers = self.api.authenticate(request)
        audit = _Audit(self.store, key.name, f"{request.method} {request.url.path}", fleet)
        audit.permit = lambda: permit(key, needed, fleet)
        return key, headers, fleet, audit

    def _known(self, fleet: str) -> None:
        if self.store.specs.get(fleet) is None and self.store.fleets.get(fleet) is None:
            raise ApiError(404, "fleet_not_found", f"this control plane serves no fleet {fleet}")

    def _spec(self, fleet: str) -> tuple[FleetSpec, Fleet]:
        stored = self.store.specs.get(fleet)
        if stored is None:
            raise ApiError(
                404,
                "spec_not_found",
                f"fleet {fleet} has no spec registered through the API; "
                f"PUT /v1/fleets/{fleet} with it first",
            )
        return stored, self._parse(fleet, stored.text.encode("utf-8"))

    def _parse(self, fleet: str, raw: bytes) -> Fleet:
        from engine.spec import parse_spec, schema_nodes

        try:
            parsed = parse_spec(raw, file=f"fleets/{fleet}", state_dir=self.state_dir)
        except SpecError as error:
            raise ApiError(
                422,
                "invalid_spec",
                f"the spec has {len(error.diagnostics)} problem(s)",
                errors=[_diagnostic(d) for d in error.diagnostics],
            ) from None
        if parsed.name != fleet:
            hint = f"PUT it to /v1/fleets/{parsed.name}"
            if re.fullmatch(schema_nodes()["/$defs/name40"]["pattern"], fleet):
                hint += f", or set name: {fleet}"  # only a name a spec can have
            raise ApiError(
                422,
                "invalid_spec",
                "the spec names another fleet",
                errors=[
                    {
                        "code": "name_mismatch",
                        "path": "name",
                        "line": 0,
                        "column": 0,
                        "message": f"the spec's name is {parsed.name}, the URL's fleet {fleet}",
                        "hint": hint,
                    }
                ],
            )
        return parsed

    def _planner(self) -> FleetPlanner:
        if self.planner is None:
            raise ApiError(
                503,
                "no_planner",
                "this control plane cannot plan (it runs inside one `engine up`); "
                "send the request to `engine serve`",
                retry_after_s=60,
            )
        return self.planner

    def _plan(self, fleet: str, stored: FleetSpec, parsed: Fleet, actor: str) -> SavedPlan:
        planner = self._planner()
        try:
            planned = planner.plan(parsed)
        except EngineError as error:
            raise ApiError(422, "cannot_plan", str(error)) from None
        saved = SavedPlan(
            id=_new_id(),
            fleet=fleet,
            spec_digest=stored.digest,
            world_digest=planned.world_digest,
            document=planned.document,
            created_at=dt.datetime.now(dt.UTC),
            created_by=actor,
            has_changes=planned.has_changes,
            blocked=planned.blocked,
        )
        self.store.runs.save_plan(saved)
        return saved

    def _check_fresh(self, plan: SavedPlan, parsed: Fleet) -> None:
        """409 unless the stored spec and the world are what the plan was made from."""
        stored = self.store.specs.get(plan.fleet)
        if stored is None or stored.digest != plan.spec_digest:
            raise ApiError(
                409,
                "plan_stale",
                f"the spec of fleet {plan.fleet} changed since plan {plan.id} was made; "
                "make a new plan",
            )
        now = self._planner().plan(parsed)
        if now.world_digest != plan.world_digest:
            raise ApiError(
                409,
                "plan_stale",
                f"fleet {plan.fleet} changed since plan {plan.id} was made (what the provider "
                "or the agents say is not what the plan saw); make a new plan",
            )

    def _start_apply(self, plan: SavedPlan, actor: str, request: Mapping[str, Any]) -> Run:
        run = Run(
            id=_new_id(),
            fleet=plan.fleet,
            kind="apply",
            status=RunStatus.QUEUED,
            created_at=dt.datetime.now(dt.UTC),
            created_by=actor,
            plan_id=plan.id,
            request=dict(request),
        )
        with self.store.transaction() as tx:
            tx.runs.add(run)
            tx.jobs.enqueue(apply_job(run.id, plan.fleet))
            tx.events.record(
                plan.fleet,
                "run.queued",
                f"run {run.id} queued: apply of plan {plan.id} by {actor}",
                data={"run": run.id, "plan": plan.id},
            )
        return run

    # --- writes -----------------------------------------------------------------------------

    async def put_fleet(self, request: Request) -> Response:
        key, headers, fleet, audit = self._writer(request, Scope.PLAN)
        with audit:
            audit.permit()  # in the block: a 403 is audited too
            raw = await _read_spec(request)
            parsed = await run_in_threadpool(self._parse, fleet, raw)
            text = raw.decode("utf-8")
            stored = FleetSpec(
                fleet=fleet,
                text=text,
                digest=spec_digest(text),
                updated_at=dt.datetime.now(dt.UTC),
                updated_by=key.name,
            )
            existed = self.store.specs.get(fleet) is not None
            await run_in_threadpool(self.store.specs.save, stored)
            audit.done(200 if existed else 201, "spec stored", digest=stored.digest)
            return JSONResponse(
                {
                    "fleet": fleet,
                    "spec_digest": stored.digest,
                    "provider": str(parsed.provider.name),
                    "groups": {g.name: g.count for g in parsed.groups},
                },
                status_code=200 if existed else 201,
                headers=headers,
            )

    async def post_plan(self, request: Request) -> Response:
        key, headers, fleet, audit = self._writer(request, Scope.PLAN)
        with audit:
            audit.permit()  # in the block: a 403 is audited too
            stored, parsed = await run_in_threadpool(self._spec, fleet)
            plan = await run_in_threadpool(self._plan, fleet, stored, parsed, key.name)
            audit.done(201, f"plan {plan.id} made", plan=plan.id)
            return JSONResponse(_plan_document(plan), status_code=201, headers=headers)

    async def post_apply(self, request: Request) -> Response:
        key, headers, fleet, audit = self._writer(request, Scope.APPLY)
        with audit:
            audit.permit()  # in the block: a 403 is audited too
            plan_id = request.path_params["plan"]
            plan = await run_in_threadpool(self.store.runs.plan, fleet, plan_id)
            if plan is None:
                raise ApiError(404, "plan_not_found", f"fleet {fleet} has no plan {plan_id}")
            if plan.blocked:
                raise ApiError(
                    409, "plan_blocked", f"plan {plan_id} is blocked; see its plan's blockers"
                )
            _, parsed = await run_in_threadpool(self._spec, fleet)
            await run_in_threadpool(self._check_fresh, plan, parsed)
            run = await run_in_threadpool(self._start_apply, plan, key.name, {"plan": plan_id})
            audit.done(202, f"run {run.id} queued", run=run.id, plan=plan_id)
            return JSONResponse(run_document(run), status_code=202, headers=headers)

    def _scale(self, fleet: str, group: str, count: int, actor: str) -> tuple[SavedPlan, Run]:
        from engine.yamldoc import read_yaml, replace_number

        stored, parsed = self._spec(fleet)
        names = [g.name for g in parsed.groups]
        if group not in names:
            raise ApiError(
                404,
                "group_not_found",
                f"fleet {fleet} has no group {group} (it has: {', '.join(names)})",
            )
        # The stored text edited where the count is written: comments and layout stay.
        path = ("groups", names.index(group), "count")
        try:
            text = replace_number(
                stored.text, read_yaml(stored.text, f"the spec of {fleet}"), path, count
            )
        except ValueError:
            raise ApiError(
                409,
                "count_not_plain",
                f"the spec of {fleet} does not write {group}'s count as a plain number (it is "
                "an anchor, an alias or inherited), so it cannot be changed alone; PUT the "
                f"spec with a plain number at groups[{names.index(group)}].count first",
            ) from None
        parsed = self._parse(fleet, text.encode("utf-8"))
        changed = FleetSpec(
            fleet=fleet,
            text=text,
            digest=spec_digest(text),
            updated_at=dt.datetime.now(dt.UTC),
            updated_by=actor,
        )
        plan = self._plan(fleet, changed, parsed, actor)
        if plan.blocked:
            raise ApiError(
                409,
                "plan_blocked",
                f"scaling {group} to {count} is blocked (a quota or a guard); nothing changed",
                extra={"plan": dict(plan.document)},
            )
        self.store.specs.save(changed)
        return plan, self._start_apply(plan, actor, {"group": group, "count": count})

    async def patch_group(self, request: Request) -> Response:
        key, headers, fleet, audit = self._writer(request, Scope.APPLY)
        with audit:
            audit.permit()  # in the block: a 403 is audited too
            body = await read_json(request, ACTION_MAX_BYTES)
            count = body.get("count") if isinstance(body, dict) else None
            most = group_count_max()
            if (
                not isinstance(body, dict)
                or set(body) != {"count"}
                or not isinstance(count, int)
                or isinstance(count, bool)
                or not 0 <= count <= most
            ):
                raise ApiError(
                    422,
                    "invalid_body",
                    "the body is not valid",
                    fields=[
                        FieldError(
                            "count", f'required, a whole number from 0 to {most}: {{"count": 3}}'
                        )
                    ],
                )
            group = request.path_params["group"]
            plan, run = await run_in_threadpool(self._scale, fleet, group, count, key.name)
            audit.done(202, f"run {run.id} queued", run=run.id, plan=plan.id, count=count)
            return JSONResponse(
                {"plan": _plan_document(plan), "run": run_document(run)},
                status_code=202,
                headers=headers,
            )

    def queue_action(self, fleet: str, name: str, action: str, actor: str) -> Run:
        """Queue `action` on the server as a run and its `server-action` job (404 when the
        fleet has no spec or no such server with a provider id)."""
        self._spec(fleet)
        record = self.store.servers.get(fleet, name)
        if record is None or not record.provider_id:
            raise ApiError(404, "server_not_found", f"fleet {fleet} has no server {name}")
        run = Run(
            id=_new_id(),
            fleet=fleet,
            kind=action,
            status=RunStatus.QUEUED,
            created_at=dt.datetime.now(dt.UTC),
            created_by=actor,
            request={"server": name, "action": action},
        )
        with self.store.transaction() as tx:
            tx.runs.add(run)
            tx.jobs.enqueue(
                NewJob(
                    kind=SERVER_ACTION_JOB,
                    fleet=fleet,
                    server=name,
                    key=f"{SERVER_ACTION_JOB}/{run.id}",
                    payload={"run": run.id},
                    max_attempts=1,
                )
            )
            tx.events.record(
                fleet,
                "run.queued",
                f"run {run.id} queued: {action} of {name} by {actor}",
                server=name,
                data={"run": run.id},
            )
        return run

    async def post_server_action(self, request: Request) -> Response:
        key, headers, fleet, audit = self._writer(request, Scope.APPLY)
        with audit:
            audit.permit()  # in the block: a 403 is audited too
            body = await read_json(request, ACTION_MAX_BYTES)
            action = body.get("action") if isinstance(body, dict) else None
            if (
                not isinstance(body, dict)
                or set(body) != {"action"}
                or action not in SERVER_ACTIONS
            ):
                raise ApiError(
                    422,
                    "invalid_body",
                    "the body is not valid",
                    fields=[FieldError("action", f"required, one of: {', '.join(SERVER_ACTIONS)}")],
                )
            name = request.path_params["name"]
            run = await run_in_threadpool(self.queue_action, fleet, name, str(action), key.name)
            audit.done(202, f"run {run.id} queued", run=run.id, action=action)
            return JSONResponse(run_document(run), status_code=202, headers=headers)

    # --- reads ------------------------------------------------------------------------------

    def _fleets(self, key: ApiKey) -> dict[str, Any]:
        specs = {s.fleet: s for s in self.store.specs.all()}
        settings = {f.name: f for f in self.store.fleets.all()}
        names = sorted(n for n in {*specs, *settings} if key.may(Scope.READ, n))
        return {"fleets": [self._fleet(n) for n in names]}

    def _fleet(self, fleet: str) -> dict[str, Any]:
        self._known(fleet)
        spec = self.store.specs.get(fleet)
        settings = self.store.fleets.get(fleet)
        stages: dict[str, int] = {}
        for record in self.store.servers.all(fleet):
            stages[str(record.stage)] = stages.get(str(record.stage), 0) + 1
        return {
            "name": fleet,
            "provider": settings.provider if settings else None,
            "spec_digest": spec.digest if spec else None,
            "spec_updated_at": _iso(spec.updated_at) if spec else None,
            "spec_updated_by": spec.updated_by if spec else None,
            "servers": stages,
            "runs": [r.id for r in self.store.runs.all(fleet, limit=10)],
        }

    async def get_fleets(self, request: Request) -> Response:
        key, headers, _ = self._key(request, Scope.READ)
        return JSONResponse(await run_in_threadpool(self._fleets, key), headers=headers)

    async def get_fleet(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        return JSONResponse(await run_in_threadpool(self._fleet, fleet), headers=headers)

    def _servers(self, fleet: str) -> dict[str, Any]:
        self._known(fleet)
        now = dt.datetime.now(dt.UTC)
        transitions = self.store.servers.transitions(fleet)
        reports = {r.server: r for r in self.store.agents.reports(fleet)}
        return {
            "fleet": fleet,
            "servers": [
                server_document(
                    r, transitions, reports.get(r.name), now=now, metrics=self.api.metrics
                )
                for r in self.store.servers.all(fleet)
            ],
        }

    async def get_servers(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        return JSONResponse(await run_in_threadpool(self._servers, fleet), headers=headers)

    def _server(self, fleet: str, name: str) -> dict[str, Any]:
        self._known(fleet)
        return stored_server(self.store, fleet, name, metrics=self.api.metrics)

    async def get_server(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        name = request.path_params["name"]
        return JSONResponse(await run_in_threadpool(self._server, fleet, name), headers=headers)

    async def get_events(self, request: Request) -> Response:
        """Events after `since` (an event id); with `wait` (seconds, at most 30), the answer
        waits until there is one or the time is up (long-poll)."""
        _, headers, fleet = self._key(request, Scope.READ)
        numbers = query_numbers(request.query_params, FLEET_EVENTS_QUERY)
        since = numbers["since"]
        server = request.query_params.get("server")
        await run_in_threadpool(self._known, fleet)
        events = await wait_for_events(
            self.store,
            fleet,
            server=server,
            since=since,
            wait_s=numbers["wait"],
            limit=numbers["limit"],
        )
        last = events[-1].id if events else since
        return JSONResponse(
            {"fleet": fleet, "events": [event_document(e) for e in events], "next": last},
            headers=headers,
        )

    def _runs(self, fleet: str, limit: int) -> dict[str, Any]:
        self._known(fleet)
        return {
            "fleet": fleet,
            "runs": [run_document(r) for r in self.store.runs.all(fleet, limit=limit)],
        }

    async def get_runs(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        limit = query_numbers(request.query_params, RUNS_QUERY)["limit"]
        return JSONResponse(await run_in_threadpool(self._runs, fleet, limit), headers=headers)

    def _run(self, fleet: str, run_id: str) -> dict[str, Any]:
        self._known(fleet)
        run = self.store.runs.get(fleet, run_id)
        if run is None:
            raise ApiError(404, "run_not_found", f"fleet {fleet} has no run {run_id}")
        return run_document(run)

    async def get_run(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        found = await run_in_threadpool(self._run, fleet, request.path_params["run"])
        return JSONResponse(found, headers=headers)

    def _saved_plan(self, fleet: str, plan_id: str) -> dict[str, Any]:
        self._known(fleet)
        plan = self.store.runs.plan(fleet, plan_id)
        if plan is None:
            raise ApiError(404, "plan_not_found", f"fleet {fleet} has no plan {plan_id}")
        return _plan_document(plan)

    async def get_plan(self, request: Request) -> Response:
        _, headers, fleet = self._key(request, Scope.READ)
        found = await run_in_threadpool(self._saved_plan, fleet, request.path_params["plan"])
        return JSONResponse(found, headers=headers)


class _Audit:
    """Records a write's outcome when its block ends: `done` for success, else the refusal
    the block raised (an ApiError's status and code, or 500)."""

    def __init__(self, store: Store, actor: str, action: str, fleet: str) -> None:
        self.store = store
        self.actor = actor
        self.action = action
        self.fleet = fleet or None
        self.outcome: tuple[int, str, dict[str, Any]] | None = None
        self.permit: Callable[[], None] = lambda: None

    def done(self, status: int, result: str, **detail: Any) -> None:
        self.outcome = (status, result, detail)

    def __enter__(self) -> _Audit:
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        detail: dict[str, Any] = {}
        if isinstance(error, ApiError):
            status, result = error.status, error.code
        elif error is not None:
            status, result = 500, "internal"
        elif self.outcome is not None:
            status, result, detail = self.outcome
        else:
            return
        self.store.audit.record(
            AuditEntry(
                at=dt.datetime.now(dt.UTC),
                actor=self.actor,
                action=self.action,
                fleet=self.fleet,
                status=status,
                result=result,
                detail=detail,
            )
        )


def _diagnostic(diagnostic: Any) -> dict[str, Any]:
    found = diagnostic.to_json()
    return {k: found[k] for k in ("code", "path", "line", "column", "message", "hint")}


async def _read_spec(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in SPEC_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the spec as application/yaml or application/json",
        )
    return await read_body(request, SPEC_MAX_BYTES)
