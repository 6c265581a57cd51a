"""The reconcile loop of `engine serve`: each fleet read and compared with its spec on a
schedule, drift recorded, and (in repair mode) repaired, by one `engine serve` at a time.

    watch = FleetWatch(fleet, store, backend, site, state_dir)
    outcome = watch.reconcile(previous)          # one run: read, plan, record, maybe repair
    with ReconcileLoops(store, [watch], owner):  # every fleet every reconcile.interval
        ...

One run is what `engine preview` and `engine up` do, headless: `preview.observe` reads the
fleet's servers with the provider's paged list calls (through the backend's reader, inside
the per-token budget engine.providers.retry.shared_budget keeps for every client of a token
in the process) and what the agents say, and `preview.plan_fleet` plans, repairs included
(engine.diff). Every change the plan holds is drift, recorded as a `reconcile.drift` event
when it is new or differs from the last run's (and `reconcile.in-sync` when a fleet that
drifted is back). With `reconcile.mode: repair`
the changes are carried out through the backend exactly as `engine up` carries them out, the
fleet's stack lock held (a run of `engine up` holding it is waited for by skipping this
round), at most `reconcile.repairs_per_hour` changes in any hour: the rest is reported and
left. New servers and reinstalls go through the control plane's durable jobs, which every
`engine serve` on the store runs.

Each tick the owner also checks the fleet's alerts (engine.controlplane.alerts) against the
agents' last heartbeats and the last run's drift.

Ownership: a fleet's loop runs where its lease (engine.state.leases) is held. Each loop tries
to take or renew its lease every few seconds; an `engine serve` that is killed stops
renewing, and another one on the same store takes the fleet once the lease ran out
(LEASE_S), well within a minute. A clean stop releases its leases at once. The lease row
carries the last run's outcome (and the repairs of the last hour), so a new owner goes on
from there instead of starting afresh; one owner and one thread per fleet means two runs of
one fleet never overlap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import io
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.catalog import load_catalog
from engine.controlplane.alerts import AlertEvaluator, fleet_readings
from engine.model import Fleet, ReconcileMode
from engine.plan import Change, Plan
from engine.progress import StageBoard
from engine.providers.seam import Backend, Site
from engine.secrets import redact
from engine.state import JobState, Lease
from engine.state.locks import StackLockedError
from engine.state.store import Store

log = logging.getLogger("engine.reconcile")

NOT_WANTED = "the fleet's spec is gone or changed: it is served anew"

LEASE_S = 30.0
TICK_S = 5.0
REPAIR_WINDOW = dt.timedelta(hours=1)


class _LogStream(io.StringIO):
    """A text stream whose lines go to the log: a board's notes, headless."""

    def __init__(self, fleet: str) -> None:
        super().__init__()
        self.fleet = fleet
        self._partial = ""

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():
                log.info("%s", line.strip(), extra={"fleet": self.fleet})
        return len(text)


def describe(change: Change) -> dict[str, Any]:
    """One change as a drift event carries it."""
    return {"server": change.server, "action": str(change.action), "reasons": list(change.reasons)}


def _shown(changes: Sequence[Mapping[str, Any]]) -> str:
    return "; ".join(f"{c['server']} {c['action']}" for c in changes)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What one reconcile run found and did."""

    drift: tuple[dict[str, Any], ...] = ()
    repaired: tuple[dict[str, Any], ...] = ()
    repairs: tuple[str, ...] = ()  # when each repair of the last hour was made (ISO times)
    api_calls: int = 0
    skipped: str = ""
    error: str = ""
    # What the provider said of each recorded server: its status, or "gone".
    provider: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def as_result(self) -> dict[str, Any]:
        """What the lease row keeps of it."""
        return {
            "provider": dict(self.provider),
            "drift": len(self.drift),
            "shown": _shown(self.drift),
            "repaired": len(self.repaired),
            "repairs": list(self.repairs),
            "api_calls": self.api_calls,
            "skipped": self.skipped,
            "error": self.error,
        }


class FleetWatch:
    """One fleet as `engine serve` watches it: its spec, its provider's backend (connected;
    `opened` when installs and repairs can run), where its control plane listens, and the
    install digest its servers should have (`digest`; by default the one for `site`).
    With `spec_digest` (the digest of the spec the store held when the watch was made), a
    run does nothing once the store's spec is gone or another (the fleet was destroyed, or
    changed through the API): a watch never repairs towards a spec that is no longer
    wanted."""

    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        backend: Backend,
        site: Site,
        state_dir: Path,
        *,
        opened: bool,
        digest: str | None = None,
        spec_digest: str | None = None,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        from engine.preview import fleet_digest

        self.fleet = fleet
        self.store = store
        self.backend = backend
        self.site = site
        self.state_dir = state_dir
        self.opened = opened
        self.spec_digest = spec_digest
        self.clock = clock
        self.catalog = load_catalog(fleet.provider.name, state_dir)
        # What an install puts on a server now, with agents reporting to `site` (given when
        # the site is not known here: the one recorded, as a preview takes it).
        self.digest = digest or fleet_digest(fleet, site.url, site.sources)

    @property
    def name(self) -> str:
        return self.fleet.name

    def wanted(self) -> bool:
        """Whether the spec this watch holds is still the fleet's desired state."""
        if self.spec_digest is None:
            return True
        stored = self.store.specs.get(self.name)
        return stored is not None and stored.digest == self.spec_digest

    def plan(self) -> tuple[Plan, dict[str, str]]:
        """Read what exists now and plan, as `engine up` does; and what the provider said of
        each recorded server (its status, or "gone")."""
        from engine.preview import fleet_keys, observe, plan_fleet, recorded
        from engine.tokens import find_fleet_id

        observed = observe(
            self.fleet,
            self.backend.reader(),
            recorded(self.store, self.name),
            state_dir=self.state_dir,
        )
        plan = plan_fleet(
            self.fleet,
            self.catalog,
            observed,
            install_hash=self.digest,
            fleet_id=find_fleet_id(self.state_dir, self.name),
            engine_sources=self.site.sources,
            ssh_public_keys=fleet_keys(self.fleet, self.state_dir),
        )
        status = {s.name: s.status for s in observed.actual}
        said = {r.name: status.get(r.name, "gone") for r in observed.records if r.provider_id}
        return plan, said

    def reconcile(self, before: Mapping[str, Any] | None = None) -> Outcome:
        """One run: read, plan, record drift, and in repair mode repair within the hour's
        budget. `before` is the last run's result (from the lease)."""
        before = before or {}
        if not self.wanted():
            return Outcome(skipped=NOT_WANTED)
        plan, said = self.plan()
        calls = plan.api_calls.read
        # A server the control plane's jobs are making or installing is on its way, not
        # drifting: planning it again would race its job.
        busy = {
            job.server
            for job in self.store.jobs.all(self.name, states=(JobState.QUEUED, JobState.RUNNING))
        }
        plan = dataclasses.replace(
            plan, changes=tuple(c for c in plan.changes if c.server not in busy)
        )
        drift = tuple(describe(c) for c in plan.changes)
        # Drift is recorded when it is new or changed, not again every interval it lasts.
        if drift and _shown(drift) != before.get("shown"):
            self.store.events.record(
                self.name,
                "reconcile.drift",
                f"{self.name} differs from its spec: {_shown(drift)}",
                data={"changes": list(drift), "blocked": plan.is_blocked},
            )
        elif not drift and before.get("drift"):
            self.store.events.record(self.name, "reconcile.in-sync", f"{self.name} is as specified")
        now = self.clock()
        recent = tuple(
            at
            for at in before.get("repairs", ())
            if dt.datetime.fromisoformat(at) > now - REPAIR_WINDOW
        )
        outcome = Outcome(drift=drift, repairs=recent, api_calls=calls, provider=said)
        if not drift or self.fleet.reconcile.mode is not ReconcileMode.REPAIR:
            return outcome
        if plan.is_blocked:
            problems = "; ".join(p.to_text() for p in plan.problems)
            return dataclasses.replace(outcome, skipped=f"the plan is blocked: {problems}")
        if not self.opened:
            return dataclasses.replace(outcome, skipped="the provider is not open for repairs")
        left = max(0, self.fleet.reconcile.repairs_per_hour - len(recent))
        chosen = plan.changes[:left]
        if len(chosen) < len(plan.changes):
            self.store.events.record(
                self.name,
                "reconcile.repairs-limited",
                f"{len(plan.changes) - len(chosen)} change(s) not repaired: "
                f"{self.fleet.reconcile.repairs_per_hour} repairs an hour at most",
            )
        if not chosen:
            return dataclasses.replace(outcome, skipped="the hour's repairs are spent")
        try:
            if not self._repair(dataclasses.replace(plan, changes=chosen)):
                return dataclasses.replace(outcome, skipped=NOT_WANTED)
        except StackLockedError as locked:
            return dataclasses.replace(outcome, skipped=f"locked: {locked.lock.command}")
        repaired = tuple(describe(c) for c in chosen)
        self.store.events.record(
            self.name,
            "reconcile.repaired",
            f"repairing {_shown(repaired)}",
            data={"changes": list(repaired)},
        )
        stamps = recent + tuple(now.isoformat() for _ in chosen)
        return dataclasses.replace(outcome, repaired=repaired, repairs=stamps)

    def _repair(self, plan: Plan) -> bool:
        """Carry out `plan` through the backend as `engine up` does, the stack lock held;
        False, with nothing done, when the spec stopped being wanted before the lock was
        taken (an `engine destroy` holding it, say)."""
        from engine.controlplane.fleets import register_fleet
        from engine.tokens import ensure_fleet_id
        from engine.up import FleetRun, hold_fleet_lock, placed_servers

        board = StageBoard(_LogStream(self.name))
        command = f"engine serve (reconcile {self.name})"
        # A lock whose holder died on this host (`kill -9`) is taken over, as `engine up`
        # takes it over: skipped, it would stop every repair until someone ran engine unlock.
        with hold_fleet_lock(self.store, self.fleet, command, board):
            if not self.wanted():
                return False
            settings = register_fleet(
                self.store, self.fleet, url=self.site.url, sources=self.site.sources
            )
            servers = placed_servers(self.fleet, self.store, self.state_dir)
            run = FleetRun(
                self.fleet,
                self.store,
                self.state_dir,
                board,
                settings,
                self.site,
                provisions=self.backend.provisioner(self.store, servers) is not None,
                fleet_id=ensure_fleet_id(self.state_dir, self.name),
            )
            self.backend.carry_out(plan, run, tuple(servers.values()))
        return True


@dataclasses.dataclass(slots=True)
class LoopStatus:
    """What the health endpoint says of one fleet's loop in this process."""

    owner: bool = False
    last_run_at: dt.datetime | None = None
    last_error: str = ""


class ReconcileLoops:
    """A thread per fleet, for a `with` block: take or renew the fleet's lease every TICK_S
    and, while it is held, reconcile every `reconcile.interval`. `put` adds a fleet, or
    gives one its new spec from the next tick on, while the loops run."""

    def __init__(
        self,
        store: Store,
        watches: Sequence[FleetWatch],
        owner: str,
        *,
        lease_s: float = LEASE_S,
        tick_s: float = TICK_S,
    ) -> None:
        self.store = store
        self.watches = {w.name: w for w in watches}
        self.owner = owner
        self.lease_s = lease_s
        self.tick_s = tick_s
        self.status = {w.name: LoopStatus() for w in watches}
        self.alerts = AlertEvaluator(store)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._running = False
        self._looping: set[str] = set()  # the fleets whose thread runs: one each at most
        self._changing = threading.Lock()

    def put(self, watch: FleetWatch) -> None:
        """Watch `watch`'s fleet: a new one gets its loop, a known one its new watch."""
        with self._changing:
            self.status.setdefault(watch.name, LoopStatus())
            self.watches[watch.name] = watch
            if self._running and watch.name not in self._looping:
                self._start(watch.name)

    def remove(self, name: str) -> None:
        """Stop watching fleet `name`: its loop ends at its next tick, its lease released."""
        with self._changing:
            self.watches.pop(name, None)

    def _start(self, name: str) -> None:
        # The fleet's agents report to this service from now on: their silence counts from
        # here for its alerts.
        listening_since = self.watches[name].clock()
        thread = threading.Thread(
            target=self._run, args=(name, listening_since), name=f"reconcile-{name}", daemon=True
        )
        self._looping.add(name)
        thread.start()
        self._threads.append(thread)

    def _take(self, watch: FleetWatch) -> Lease | None:
        try:
            lease = self.store.leases.take(watch.name, self.owner, ttl_s=self.lease_s)
        except Exception as error:  # the store is unreachable: not the owner until it is back
            self.status[watch.name].last_error = redact(f"the store: {error}")
            return None
        status = self.status[watch.name]
        if lease is not None and not status.owner:
            log.info("reconciling %s from now on", watch.name, extra={"fleet": watch.name})
            self.store.events.record(
                watch.name,
                "reconcile.owner",
                f"{self.owner} runs the reconcile loop of {watch.name}",
                data={"owner": self.owner},
            )
        status.owner = lease is not None
        return lease

    def _due(self, watch: FleetWatch, lease: Lease) -> bool:
        last = lease.last_run_at
        interval = dt.timedelta(seconds=watch.fleet.reconcile.interval_s)
        return last is None or watch.clock() - last >= interval

    @contextlib.contextmanager
    def _renewing(self, fleet: str) -> Iterator[None]:
        """Keep the lease while a run takes longer than a tick."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.lease_s / 3):
                self.store.leases.take(fleet, self.owner, ttl_s=self.lease_s)

        thread = threading.Thread(target=renew, name=f"lease-{fleet}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _check_alerts(self, watch: FleetWatch, lease: Lease, listening_since: dt.datetime) -> None:
        now = watch.clock()
        try:
            readings = fleet_readings(
                self.store,
                watch.name,
                watch.fleet.install.agent.heartbeat_s,
                int(lease.last_result.get("drift", 0)),
                now,
                listening_since=listening_since,
            )
            self.alerts.evaluate(watch.fleet, readings, now)
        except Exception as error:  # the store: the next tick again
            log.warning("alerts of %s: %s", watch.name, redact(str(error)))

    def _run(self, name: str, listening_since: dt.datetime) -> None:
        status = self.status[name]
        while not self._stop.is_set():
            with self._changing:
                watch = self.watches.get(name)  # the fleet's spec as it is now
                if watch is None:  # removed: a later `put` starts a thread anew
                    self._looping.discard(name)
                    break
            lease = self._take(watch)
            if lease is not None and self._due(watch, lease):
                started = time.monotonic()
                try:
                    with self._renewing(watch.name):
                        outcome = watch.reconcile(lease.last_result)
                except Exception as error:  # the provider or the store: next interval again
                    outcome = Outcome(error=redact(f"{type(error).__name__}: {error}"))
                    log.warning(
                        "reconcile of %s failed: %s",
                        watch.name,
                        outcome.error,
                        extra={"fleet": watch.name},
                    )
                status.last_run_at = watch.clock()
                status.last_error = outcome.error
                log.info(
                    "reconciled %s: %d change(s) of drift, %d repaired%s",
                    watch.name,
                    len(outcome.drift),
                    len(outcome.repaired),
                    f" ({outcome.skipped})" if outcome.skipped else "",
                    extra={
                        "fleet": watch.name,
                        "seconds": round(time.monotonic() - started, 3),
                        "api_calls": outcome.api_calls,
                    },
                )
                self.store.leases.record_run(watch.name, self.owner, outcome.as_result())
                lease = dataclasses.replace(lease, last_result=outcome.as_result())
            if lease is not None and watch.fleet.alerts:
                self._check_alerts(watch, lease, listening_since)
            self._stop.wait(self.tick_s)
        if status.owner:
            self.store.leases.release(name, self.owner)

    def __enter__(self) -> ReconcileLoops:
        with self._changing:
            self._running = True
            for name in self.watches:
                self._start(name)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._changing:
            self._running = False
        self._stop.set()
        for thread in self._threads:
            thread.join()
