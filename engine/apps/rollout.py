"""A rollout of one app over its servers, as a state machine. Pure: no I/O, no clock (the
caller passes `now`), so every transition can be tested and replayed.

    rolling ──every server switched──────────────────────────────> succeeded
       │ a server failed, rollback: auto         rollback: manual
       v                                               │
    rolling_back ──every changed server put back──> rolled_back    v
       │ a server could not be put back                         failed
       └──────────────────────────────────────────────────────> failed

Each server goes pending -> switching -> watching -> switched (or failed): watching, it
serves the new version and is checked for update.monitor before it counts as switched. A
rolling back puts every server it changed (watching, switched or failed) back on the version
it ran before: reverting -> reverted (or revert_failed). A server's `replaces` (apps leaving
it whose ports the new version takes) go with it: they stop as it starts, and are put back
with it. Groups go one after the other in
the order given; inside a group at most `max_unavailable` servers switch at once (a server
watched serves, so it is not unavailable: the next one switches while it is watched, as
Swarm's update monitor does), and the next group starts only when every server of the one
before has switched. Reverting goes group by group in parallel, at most `max_unavailable`
at once in each, once the servers still switching have finished.

The executor (engine.apps.deploy) asks `next_servers`, starts them, reports each end with
`finish`, and stores the rollout after every transition (`to_json`). A run that dies leaves
servers `switching`, `watching` or `reverting`; `resume` turns them back into work to do:
a switch is done again from the start (each step checks what is there first), a watch is
begun again, a revert is done again.
`rollback` turns an ended rollout around: every server it changed goes back.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from engine.model import RollbackMode


class Phase(StrEnum):
    ROLLING = "rolling"
    ROLLING_BACK = "rolling_back"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    SUPERSEDED = "superseded"  # a rollout of another version took over before it ended


ENDED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.ROLLED_BACK, Phase.SUPERSEDED})


class Step(StrEnum):
    PENDING = "pending"
    SWITCHING = "switching"
    WATCHING = "watching"  # serving the new version, checked for update.monitor
    SWITCHED = "switched"
    FAILED = "failed"
    REVERTING = "reverting"
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"


# Servers a rolling back puts back: they run (or may run) the new version.
CHANGED = frozenset({Step.WATCHING, Step.SWITCHED, Step.FAILED})
IN_FLIGHT = frozenset({Step.SWITCHING, Step.REVERTING})


class RolloutError(Exception):
    """A transition the state machine does not have (a bug in its caller)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One server a rollout changes: from the version it runs (None: the app does not run
    there) to the one it should (None: the app goes). `replaces` are the apps leaving the
    server (app, version) whose ports the new version takes: they stop as it starts, and are
    put back with it."""

    server: str
    group: str
    from_version: str | None
    to_version: str | None
    replaces: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerRollout:
    """Where one server is in the rollout, and how long its steps took (seconds)."""

    server: str
    group: str
    from_version: str | None
    to_version: str | None
    replaces: tuple[tuple[str, str], ...] = ()
    step: Step = Step.PENDING
    reason: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    timings: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rollout:
    """One app's rollout to `version` ("" when the app is removed everywhere)."""

    fleet: str
    app: str
    version: str
    max_unavailable: int
    rollback_mode: RollbackMode
    servers: tuple[ServerRollout, ...]
    phase: Phase = Phase.ROLLING
    reason: str = ""
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None

    def server(self, name: str) -> ServerRollout:
        for entry in self.servers:
            if entry.server == name:
                return entry
        raise RolloutError(f"{name} is not part of the rollout of {self.app}")

    @property
    def is_over(self) -> bool:
        """Ended, with no server still on its way."""
        return self.phase in ENDED and not any(s.step in IN_FLIGHT for s in self.servers)

    def steps(self) -> dict[str, Step]:
        return {s.server: s.step for s in self.servers}


def new_rollout(
    fleet: str,
    app: str,
    version: str,
    targets: Sequence[Target],
    *,
    max_unavailable: int,
    rollback: RollbackMode,
    now: dt.datetime,
) -> Rollout:
    """A rollout of `targets`, in the order given (group after group)."""
    if max_unavailable < 1:
        raise RolloutError("max_unavailable must be at least 1")
    seen = [t.server for t in targets]
    if len(set(seen)) != len(seen):
        raise RolloutError("a server appears twice in the rollout")
    rollout = Rollout(
        fleet=fleet,
        app=app,
        version=version,
        max_unavailable=max_unavailable,
        rollback_mode=rollback,
        servers=tuple(
            ServerRollout(
                server=t.server,
                group=t.group,
                from_version=t.from_version,
                to_version=t.to_version,
                replaces=t.replaces,
            )
            for t in targets
        ),
        started_at=now,
    )
    return _settle(rollout, now)


def _groups(rollout: Rollout) -> list[str]:
    return list(dict.fromkeys(s.group for s in rollout.servers))


def next_servers(rollout: Rollout) -> tuple[str, ...]:
    """The servers to start now (none while the in-flight ones must finish first)."""
    if rollout.phase is Phase.ROLLING:
        for group in _groups(rollout):
            members = [s for s in rollout.servers if s.group == group]
            if all(s.step is Step.SWITCHED for s in members):
                continue
            busy = sum(1 for s in members if s.step is Step.SWITCHING)
            free = max(0, rollout.max_unavailable - busy)
            return tuple(s.server for s in members if s.step is Step.PENDING)[:free]
        return ()
    if rollout.phase is Phase.ROLLING_BACK:
        if any(s.step is Step.SWITCHING for s in rollout.servers):
            return ()
        chosen: list[str] = []
        for group in _groups(rollout):
            members = [s for s in rollout.servers if s.group == group]
            busy = sum(1 for s in members if s.step is Step.REVERTING)
            free = max(0, rollout.max_unavailable - busy)
            # The last one changed goes back first: undone in the opposite order.
            todo = [s.server for s in reversed(members) if s.step in CHANGED]
            chosen += todo[:free]
        return tuple(chosen)
    return ()


def to_watch(rollout: Rollout) -> tuple[str, ...]:
    """The servers to watch (those that switched while the rollout goes on)."""
    if rollout.phase is not Phase.ROLLING:
        return ()
    return tuple(s.server for s in rollout.servers if s.step is Step.WATCHING)


def start(rollout: Rollout, server: str, now: dt.datetime) -> Rollout:
    """`server` begins to switch (rolling) or to be put back (rolling back)."""
    entry = rollout.server(server)
    if server not in next_servers(rollout):
        raise RolloutError(f"{server} cannot start now ({entry.step}, rollout {rollout.phase})")
    step = Step.SWITCHING if rollout.phase is Phase.ROLLING else Step.REVERTING
    return _put(rollout, replace(entry, step=step, started_at=now, finished_at=None))


def finish(
    rollout: Rollout,
    server: str,
    *,
    ok: bool,
    now: dt.datetime,
    reason: str = "",
    timings: Iterable[tuple[str, float]] = (),
) -> Rollout:
    """`server` has switched (then it is watched), been watched, or been put back: `ok`,
    or failed for `reason`."""
    entry = rollout.server(server)
    if entry.step is Step.SWITCHING:
        step = Step.WATCHING if ok else Step.FAILED
    elif entry.step is Step.WATCHING:
        step = Step.SWITCHED if ok else Step.FAILED
    elif entry.step is Step.REVERTING:
        step = Step.REVERTED if ok else Step.REVERT_FAILED
    else:
        raise RolloutError(f"{server} is {entry.step}: nothing of it was under way")
    kept = dict(entry.timings)
    kept.update(timings)
    done = replace(entry, step=step, reason=reason, finished_at=now, timings=tuple(kept.items()))
    rollout = _put(rollout, done)
    if step is Step.FAILED and rollout.phase is Phase.ROLLING:
        why = f"{server}: {reason}" if reason else f"{server} failed"
        if rollout.rollback_mode is RollbackMode.AUTO:
            rollout = replace(rollout, phase=Phase.ROLLING_BACK, reason=why)
        else:
            rollout = replace(rollout, phase=Phase.FAILED, reason=why, finished_at=now)
    return _settle(rollout, now)


def rollback(rollout: Rollout, now: dt.datetime) -> Rollout:
    """Turn an ended rollout around: every server it changed goes back to what it ran."""
    if not rollout.is_over:
        raise RolloutError(f"the rollout of {rollout.app} is still {rollout.phase}")
    reason = rollout.reason or f"rolled back after it {rollout.phase}"
    turned = replace(rollout, phase=Phase.ROLLING_BACK, reason=reason, finished_at=None)
    return _settle(turned, now)


def resume(rollout: Rollout, now: dt.datetime) -> Rollout:
    """The rollout as a new run takes it up after the one running it died: what was under way
    is to be done again (a switch from the start; a server stopped mid-switch or mid-revert
    in a rolling back is put back again; a watch, which `watching` asks for, from its
    start)."""
    servers = []
    for entry in rollout.servers:
        if entry.step is Step.SWITCHING:
            again = Step.PENDING if rollout.phase is Phase.ROLLING else Step.FAILED
            entry = replace(entry, step=again, reason="interrupted", started_at=None)
        elif entry.step is Step.REVERTING:
            entry = replace(entry, step=Step.FAILED, reason="interrupted while put back")
        servers.append(entry)
    return _settle(replace(rollout, servers=tuple(servers)), now)


def supersede(rollout: Rollout, by_version: str, now: dt.datetime) -> Rollout:
    """End a rollout that a rollout of another version replaces."""
    servers = tuple(
        replace(s, step=Step.FAILED, reason="superseded")
        if s.step in IN_FLIGHT or s.step is Step.WATCHING
        else s
        for s in rollout.servers
    )
    return replace(
        rollout,
        servers=servers,
        phase=Phase.SUPERSEDED,
        reason=f"superseded by a rollout of {by_version or 'its removal'}",
        finished_at=now,
    )


def _put(rollout: Rollout, entry: ServerRollout) -> Rollout:
    return replace(
        rollout,
        servers=tuple(entry if s.server == entry.server else s for s in rollout.servers),
    )


def _settle(rollout: Rollout, now: dt.datetime) -> Rollout:
    """The phase that follows from the servers' steps, where one follows."""
    steps = [s.step for s in rollout.servers]
    if rollout.phase is Phase.ROLLING and all(step is Step.SWITCHED for step in steps):
        return replace(rollout, phase=Phase.SUCCEEDED, finished_at=now)
    if rollout.phase is Phase.ROLLING_BACK and not any(
        step in CHANGED or step in IN_FLIGHT for step in steps
    ):
        stuck = [s.server for s in rollout.servers if s.step is Step.REVERT_FAILED]
        if stuck:
            reason = f"{rollout.reason}; could not put back {', '.join(stuck)}"
            return replace(rollout, phase=Phase.FAILED, reason=reason, finished_at=now)
        return replace(rollout, phase=Phase.ROLLED_BACK, finished_at=now)
    return rollout


# --- storage -----------------------------------------------------------------------------


def _time(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def to_json(rollout: Rollout) -> dict[str, Any]:
    """The rollout as the state store keeps it."""
    return {
        "fleet": rollout.fleet,
        "app": rollout.app,
        "version": rollout.version,
        "max_unavailable": rollout.max_unavailable,
        "rollback": str(rollout.rollback_mode),
        "phase": str(rollout.phase),
        "reason": rollout.reason,
        "started_at": _time(rollout.started_at),
        "finished_at": _time(rollout.finished_at),
        "servers": [
            {
                "server": s.server,
                "group": s.group,
                "from_version": s.from_version,
                "to_version": s.to_version,
                "replaces": [{"app": app, "version": version} for app, version in s.replaces],
                "step": str(s.step),
                "reason": s.reason,
                "started_at": _time(s.started_at),
                "finished_at": _time(s.finished_at),
                "timings": dict(s.timings),
            }
            for s in rollout.servers
        ],
    }


def from_json(data: Mapping[str, Any]) -> Rollout:
    """A rollout `to_json` wrote."""
    return Rollout(
        fleet=data["fleet"],
        app=data["app"],
        version=data["version"],
        max_unavailable=data["max_unavailable"],
        rollback_mode=RollbackMode(data["rollback"]),
        phase=Phase(data["phase"]),
        reason=data["reason"],
        started_at=_parse_time(data["started_at"]),
        finished_at=_parse_time(data["finished_at"]),
        servers=tuple(
            ServerRollout(
                server=s["server"],
                group=s["group"],
                from_version=s["from_version"],
                to_version=s["to_version"],
                replaces=tuple((r["app"], r["version"]) for r in s.get("replaces", ())),
                step=Step(s["step"]),
                reason=s["reason"],
                started_at=_parse_time(s["started_at"]),
                finished_at=_parse_time(s["finished_at"]),
                timings=tuple((k, float(v)) for k, v in s["timings"].items()),
            )
            for s in data["servers"]
        ),
    )
