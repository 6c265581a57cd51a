"""What the fleet API asks of the engine, done headless: plans, and the jobs that carry out
applies and server actions (the control plane's routes are engine.controlplane.fleetapi).

    planner = RemotePlanner(store, state_dir)       # the API's FleetPlanner
    registry.register(ApplyHandler(store, state_dir, state_url))
    registry.register(ServerActionHandler(store, state_dir, state_url))

A plan is made the way `engine preview` makes one (the provider's list calls, the agents of
servers not heard from, the store's records), and saved with the digest of what was observed
(`world_digest`). An apply is `engine up` itself, on the stored spec, told to stop before it
changes anything unless, under the fleet's lock, the spec, the world and the plan it makes
are those of the saved plan (with the saved plan's spec, a plan that changes nothing now
has nothing to do: an apply of the same spec ran before it); a server action is `engine
server`'s `signal_server`. Their output is the JSON-lines board of those commands, kept as
the run's progress; the `done` line's timings are the run's result.

Both hold the fleet's stack lock, so the workers run them one at a time in each fleet, in
the order they were accepted (`holds_fleet_lock`). A run whose fleet's lock another command
holds (an `engine up` in a terminal, the reconcile loop's repair) stays queued and waits for
it, saying whom it waits for (`run.waiting`), rather than failing.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.catalog import load_catalog
from engine.controlplane.fleetapi import (
    APPLY_JOB,
    SERVER_ACTION_JOB,
    Planned,
    plan_changes,
)
from engine.controlplane.jobs import Again, Done
from engine.errors import EngineError
from engine.health import AgentAnswer
from engine.model import Fleet
from engine.plan import Plan
from engine.preview import (
    Observed,
    fleet_keys,
    observe,
    plan_fleet,
    recorded,
    recorded_digest,
)
from engine.providers.registry import inventory_reader, require_reader
from engine.providers.seam import RunOptions, Signal, Site
from engine.secrets import redact, token_from_env
from engine.state import Job, Run, RunStatus
from engine.state.files import private_dir
from engine.state.locks import StackLockedError
from engine.state.store import Store

log = logging.getLogger("engine.remote")

# How long a run waits before it looks again at a fleet lock another command holds.
LOCK_WAIT_S = 5.0

# Heard within its window or asked and healthy: the same agent, whichever way it was found.
_AGENT_UP = {AgentAnswer.HEARD: "up", AgentAnswer.ANSWERED: "up"}


class StalePlan(EngineError):
    """The fleet or the world changed between a plan and its apply."""


def world_digest(observed: Observed) -> str:
    """The SHA-256 of what a plan was made from, without what changes by itself (times,
    addresses a provider hands out anew, API call counts): the provider's servers, the
    unowned ones in the way, the store's records and what the agents say."""
    world = {
        "actual": sorted(
            [
                s.name,
                s.provider_id,
                s.status,
                s.server_type,
                s.location,
                s.image.describe() if s.image else None,
                sorted(s.labels),
                s.fleet_id,
            ]
            for s in observed.actual
        ),
        "unowned": sorted([s.name, s.provider_id] for s in observed.unowned),
        "records": sorted(
            [r.name, str(r.stage), r.provider_id, r.install_hash or ""] for r in observed.records
        ),
        "agents": sorted(
            (name, _AGENT_UP.get(seen.answer, str(seen.answer)))
            for name, seen in observed.agents.items()
        ),
        "failures": sorted(observed.failures.items()),
    }
    return hashlib.sha256(json.dumps(world, sort_keys=True).encode()).hexdigest()


def _provider_token(fleet: Fleet) -> str:
    env = fleet.provider.token_env
    if env is None:
        return ""
    value = token_from_env(env)
    if not value:
        raise EngineError(
            f"this control plane has no {env} in its environment, so it cannot read what "
            f"exists on {fleet.provider.name}; start `engine serve` with {env} set"
        )
    return value


class RemotePlanner:
    """The fleet API's planner: `engine preview`'s plan, over the control plane's store."""

    def __init__(self, store: Store, state_dir: Path) -> None:
        self.store = store
        self.state_dir = state_dir

    def plan(self, fleet: Fleet) -> Planned:
        """The plan for `fleet` from what exists now, and the digest of what that is."""
        from engine.render import render_json
        from engine.tokens import find_fleet_id

        catalog = load_catalog(str(fleet.provider.name), self.state_dir)
        require_reader(fleet.provider.name)
        reader = inventory_reader(fleet, token=_provider_token(fleet))
        known = recorded(self.store, fleet.name)
        observed = observe(fleet, reader, known, state_dir=self.state_dir)
        plan = plan_fleet(
            fleet,
            catalog,
            observed,
            install_hash=recorded_digest(fleet, known.settings),
            fleet_id=find_fleet_id(self.state_dir, fleet.name),
            engine_sources=known.settings.control_plane_sources if known.settings else (),
            ssh_public_keys=fleet_keys(fleet, self.state_dir),
        )
        return Planned(
            document=render_json(plan),
            world_digest=world_digest(observed),
            has_changes=plan.has_changes,
            blocked=plan.is_blocked,
        )


class RunLog(io.StringIO):
    """A command's JSON-lines output, kept line by line as a run's progress."""

    def __init__(self, store: Store, run_id: str) -> None:
        super().__init__()
        self.store = store
        self.run_id = run_id
        self.done: dict[str, Any] = {}
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._keep(line)
        return len(text)

    def _keep(self, line: str) -> None:
        if not line.strip():
            return
        try:
            event = json.loads(line)
        except ValueError:
            event = {"event": "note", "message": line}
        if not isinstance(event, dict):
            event = {"event": "note", "message": str(event)}
        if event.get("event") == "done":
            self.done = event
        if event.get("event") == "plan":
            # The plan is the saved plan's, which the run names: no need to keep it twice.
            event = {"event": "plan", "changes": plan_changes(event.get("plan", {}))}
        self.store.runs.progress(self.run_id, event)


class _RunHandler:
    """What an apply and a server action share: the run's bookkeeping around a command,
    which holds the fleet's stack lock (so the workers run one of them a fleet at a time)."""

    kind = ""
    holds_fleet_lock = True

    def __init__(
        self,
        store: Store,
        state_dir: Path,
        state_url: str | None = None,
        *,
        hosted: Callable[[str], Site | None] = lambda _: None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.state_url = state_url
        # Where the control plane running this job serves a fleet, if it does: the command
        # uses it instead of starting one of its own on the fleet's address.
        self.hosted = hosted

    def _options(self, fleet: str) -> RunOptions:
        return RunOptions(
            state_dir=self.state_dir,
            state=self.state_url,
            yes=True,
            json_lines=True,
            hosted=self.hosted(fleet),
        )

    def _spec_file(self, fleet: str) -> Path:
        stored = self.store.specs.get(fleet)
        if stored is None:
            raise EngineError(f"fleet {fleet} has no spec registered through the API")
        path = private_dir(self.state_dir, "api", "specs") / f"{fleet}.yaml"
        path.write_text(stored.text, encoding="utf-8")
        return path

    def _carry_out(self, job: Job, command: Callable[[Run, RunLog], int]) -> Done | Again:
        run = self.store.runs.get(job.fleet, str(job.payload["run"]))
        if run is None or run.status is not RunStatus.QUEUED:
            return Done({"skipped": "no such queued run"})
        try:  # not started only for the command to stop at the lock
            self.store.locks.check_free(run.fleet)
        except StackLockedError as locked:
            return self._wait(job, run, locked)
        self.store.runs.start(run.id)
        self.store.events.record(
            run.fleet, "run.started", f"run {run.id} ({run.kind}) started", data={"run": run.id}
        )
        out = RunLog(self.store, run.id)
        error = ""
        try:
            code = command(run, out)
            status = RunStatus.SUCCEEDED if code == 0 else RunStatus.FAILED
            if code != 0:
                error = _why_not(out.done)
        except StackLockedError as locked:  # taken since the look above, before the command
            self.store.runs.wait(run.id)
            return self._wait(job, run, locked)
        except StalePlan as stale:
            status, error = RunStatus.STALE, str(stale)
        except EngineError as failed:
            status, error = RunStatus.FAILED, str(failed)
        except Exception as failed:  # a bug: the run says so, the worker carries on
            log.exception("run %s failed", run.id)
            status, error = RunStatus.FAILED, redact(f"{type(failed).__name__}: {failed}")
        result = {k: v for k, v in out.done.items() if k != "event"}
        self.store.runs.finish(run.id, status, result=result, error=error)
        self.store.events.record(
            run.fleet,
            f"run.{status}",
            f"run {run.id} ({run.kind}) {status}" + (f": {error}" if error else ""),
            data={"run": run.id},
        )
        return Done({"run": run.id, "status": str(status)})

    def _wait(self, job: Job, run: Run, locked: StackLockedError) -> Again:
        """The run stays queued while another command (an `engine up` in a terminal, a
        reconcile repair) holds the fleet's lock, and is tried again after LOCK_WAIT_S; whom
        it waits for is said once a lock, in its progress and in the fleet's events."""
        if job.payload.get("waits_for") != locked.lock.lock_id:
            message = f"waits for the fleet's lock: {locked}"
            self.store.runs.progress(run.id, {"event": "waiting", "message": message})
            self.store.events.record(
                run.fleet,
                "run.waiting",
                f"run {run.id} ({run.kind}) {message}",
                data={"run": run.id, "lock": locked.lock.lock_id},
            )
        return Again(LOCK_WAIT_S, {**job.payload, "waits_for": locked.lock.lock_id})

    def give_up(self, job: Job, error: str) -> None:
        self.store.runs.finish(str(job.payload.get("run")), RunStatus.FAILED, error=error)


def _why_not(done: Mapping[str, Any]) -> str:
    stuck = done.get("not_ready") or {}
    if not stuck:
        return "the run did not end with every server ready (see its progress)"
    return "not ready: " + ", ".join(f"{name} ({stage})" for name, stage in stuck.items())


class ApplyHandler(_RunHandler):
    """Applies a saved plan with `engine up`, exactly as saved or not at all."""

    kind = APPLY_JOB

    def run(self, job: Job) -> Done | Again:
        return self._carry_out(job, self._apply)

    def _apply(self, run: Run, out: RunLog) -> int:
        from engine.render import render_json
        from engine.up import up

        saved = self.store.runs.plan(run.fleet, run.plan_id or "")
        if saved is None:
            raise EngineError(f"run {run.id}'s plan {run.plan_id} is gone")

        def check(observed: Observed, plan: Plan) -> None:
            stored = self.store.specs.get(run.fleet)
            if stored is None or stored.digest != saved.spec_digest:
                raise StalePlan(f"the spec changed since plan {saved.id}; nothing was done")
            if not plan.has_changes:
                return  # what the plan changes is done (by an apply queued before this one)
            if world_digest(observed) != saved.world_digest:
                raise StalePlan(f"the fleet changed since plan {saved.id}; nothing was done")
            if plan_changes(render_json(plan)) != plan_changes(saved.document):
                raise StalePlan(f"the plan made now is not plan {saved.id}; nothing was done")

        spec = self._spec_file(run.fleet)
        return up(spec, self._options(run.fleet), out, lambda _: True, check=check)


class ServerActionHandler(_RunHandler):
    """Signals one server the way `engine server ACTION` does."""

    kind = SERVER_ACTION_JOB

    def run(self, job: Job) -> Done | Again:
        return self._carry_out(job, self._signal)

    def _signal(self, run: Run, out: RunLog) -> int:
        from engine.signals import signal_server

        spec = self._spec_file(run.fleet)
        signal = Signal(str(run.request["action"]))
        return signal_server(
            spec, str(run.request["server"]), signal, self._options(run.fleet), out
        )
