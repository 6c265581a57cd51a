"""Bringing every server of a run to ready, with a budget of tries per server.

`engine up` carries out its plan, then waits here. A server that ends failed is not given up
at once: after a back-off (5 s, 10 s, 20 s, ... at most a minute) the world is read again and
the server gets the repair that fits what the provider and its agent say now, planned exactly
as `engine up` plans (engine.diff): installed again, powered on, made anew, rebuilt, replaced,
or created if it is gone. Each such repair is one more try; the plan's own change was the
first. When a server's tries are spent it stays failed, with its cause, and the run reports it;
the next `engine up` starts with a fresh budget.

The tries of a run are counted here and nowhere else: the durable jobs underneath keep their
own short retries for what passes by itself (a mirror's hiccup), and a run that dies loses
only its count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Mapping, Sequence

from engine.controlplane.servers import SETTLED
from engine.model import Stage
from engine.plan import Plan
from engine.progress import ServerStage
from engine.providers.seam import FleetRun
from engine.state import ServerRecord

POLL_S = 0.5
BACKOFF_S = 5.0
BACKOFF_CAP_S = 60.0


def backoff_s(tries: int) -> float:
    """Seconds to wait before the next try of a server that failed `tries` times."""
    return float(min(BACKOFF_CAP_S, BACKOFF_S * 2 ** max(0, tries - 1)))


def only(plan: Plan, names: Sequence[str]) -> Plan:
    """`plan` with the changes of `names` only (resources besides servers were the first
    run's business)."""
    changes = tuple(c for c in plan.changes if c.server in names)
    return dataclasses.replace(plan, changes=changes, resources=())


def converge(
    run: FleetRun,
    names: Sequence[str],
    *,
    replan: Callable[[], Plan],
    carry_out: Callable[[Plan], None],
    tries: int,
    timeout_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict[str, ServerRecord], dict[str, int]]:
    """Wait until every one of `names` is ready (or unhealthy), or failed with its `tries`
    spent, or `timeout_s` passes; a failed server with tries left is planned again
    (`replan` reads the world and plans the whole fleet) and its repair carried out. The board
    is kept current. Returns the records as they are then, and how many tries each server had.
    """
    fleet = run.fleet.name
    tried = dict.fromkeys(names, 1)
    due: dict[str, float] = {}
    deadline = clock() + timeout_s
    while True:
        records = {r.name: r for r in run.store.servers.all(fleet) if r.name in names}
        _show(run, names, records)
        now = clock()
        for name, record in records.items():
            if record.stage is Stage.FAILED and name not in due and tried[name] < tries:
                wait = backoff_s(tried[name])
                due[name] = now + wait
                run.board.note(
                    f"{name} failed (try {tried[name]} of {tries}): {record.stage_reason}; "
                    f"looking at it again in {wait:.0f} s"
                )
        ripe = [name for name, at in due.items() if at <= now]
        if ripe:
            for name in ripe:
                del due[name]
                tried[name] += 1
            again = replan()
            if again.is_blocked:
                for problem in again.problems:
                    run.board.note(f"not tried again: {problem.to_text()}")
                continue
            again = only(again, ripe)
            for change in again.changes:
                run.board.note(f"{change.server}: {change.action} ({'; '.join(change.reasons)})")
            carry_out(again)
            continue
        settled = len(records) == len(names) and all(r.stage in SETTLED for r in records.values())
        if (settled and not due) or now >= deadline:
            return records, tried
        sleep(POLL_S)


def _show(run: FleetRun, names: Sequence[str], records: Mapping[str, ServerRecord]) -> None:
    now = dt.datetime.now(dt.UTC)
    run.board.update(
        [
            ServerStage(
                name=r.name, stage=r.stage, since=r.updated_at or now, reason=r.stage_reason
            )
            for r in sorted(records.values(), key=lambda r: names.index(r.name))
        ]
    )
