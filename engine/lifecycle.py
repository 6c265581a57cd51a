"""Per-step durations of a server's way to ready (the timing table), from its history.

Pure: takes the transitions and the record the state store holds and does no I/O.

    create      creating -> booting            the provider's create call
    boot        booting -> cloud-init done      as the server reported it in its phone-home
    phone_home  cloud-init done -> phoned_home  the phone-home's way in (retries included)
    install     installing -> installed         the install job over SSH
    agent       installed -> ready              until the agent's first heartbeat

Without a phone-home (polling fallback) there is no cloud-init time: `boot` runs to the
moment the server answered SSH and `phone_home` is unknown. A step not reached is None.

`failures_since_ready` counts, per server, the failures since it was last ready: what a plan
says of a server it retries.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Mapping, Sequence

from engine.model import Stage
from engine.state import ServerRecord, Transition

STEPS = ("create", "boot", "phone_home", "install", "agent")
StepDurations = Mapping[str, float | None]


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    # Clocks of the server and the control plane differ a little: never a negative step.
    return max(0.0, (end - start).total_seconds())


def step_durations(record: ServerRecord, transitions: Sequence[Transition]) -> StepDurations:
    """How long each step of the server's latest way to ready took (seconds), None for steps
    not done. A server made again, rebuilt or reinstalled has entered some stages more than
    once: each step is timed from its stage's latest entry to what ended it, never from one
    attempt to the next (a first `booting` to the latest cloud-init read as a boot of hours).
    """
    entered: dict[Stage, list[dt.datetime]] = {}
    for transition in sorted(transitions, key=lambda t: t.at):
        if transition.server == record.name:
            entered.setdefault(transition.stage, []).append(transition.at)
    made = _last(entered.get(Stage.CREATING) or entered.get(Stage.REQUESTED) or [])
    booting = _last(entered.get(Stage.BOOTING, []))
    finished = record.cloud_init_finished_at
    if finished is not None and booting is not None and finished < booting:
        finished = None  # the cloud-init of an earlier boot
    phoned = _first_after(entered.get(Stage.PHONED_HOME, []), finished or booting)
    installed = record.installed_at
    installing = _last(entered.get(Stage.INSTALLING, []), until=installed) if installed else None
    return {
        "create": _seconds(made, _first_after(entered.get(Stage.BOOTING, []), made)),
        "boot": _seconds(booting, finished or phoned),
        "phone_home": _seconds(finished, phoned) if finished else None,
        "install": _seconds(installing, installed),
        "agent": _seconds(installed, _first_after(entered.get(Stage.READY, []), installed)),
    }


def _last(times: Sequence[dt.datetime], until: dt.datetime | None = None) -> dt.datetime | None:
    """The latest of `times` (in order), at or before `until` if given."""
    found = [t for t in times if until is None or t <= until]
    return found[-1] if found else None


def _first_after(times: Sequence[dt.datetime], start: dt.datetime | None) -> dt.datetime | None:
    """The first of `times` (in order) at or after `start`; None without a start."""
    if start is None:
        return None
    return next((t for t in times if t >= start), None)


def median_durations(
    per_server: Sequence[StepDurations], steps: Sequence[str] = STEPS
) -> StepDurations:
    """Each step's median over the servers that did it (None if none did)."""
    medians: dict[str, float | None] = {}
    for step in steps:
        done = [d[step] for d in per_server if d.get(step) is not None]
        medians[step] = statistics.median(done) if done else None  # type: ignore[type-var]
    return medians


def failures_since_ready(transitions: Sequence[Transition]) -> dict[str, int]:
    """How often each server entered `failed` since it last entered `ready` (or ever, if it
    never was ready); servers that have not failed since are left out."""
    counted: dict[str, int] = {}
    for transition in sorted(transitions, key=lambda t: t.at):
        if transition.stage is Stage.READY:
            counted.pop(transition.server, None)
        elif transition.stage is Stage.FAILED:
            counted[transition.server] = counted.get(transition.server, 0) + 1
    return counted
