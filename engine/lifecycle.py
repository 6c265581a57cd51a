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
    """How long each step took for one server (seconds), None for steps not done."""
    entered: dict[Stage, dt.datetime] = {}
    for transition in sorted(transitions, key=lambda t: t.at):
        if transition.server == record.name:
            entered.setdefault(transition.stage, transition.at)
    started = entered.get(Stage.CREATING) or entered.get(Stage.REQUESTED)
    booting = entered.get(Stage.BOOTING)
    phoned = entered.get(Stage.PHONED_HOME)
    finished = record.cloud_init_finished_at
    return {
        "create": _seconds(started, booting),
        "boot": _seconds(booting, finished or phoned),
        "phone_home": _seconds(finished, phoned) if finished else None,
        "install": _seconds(entered.get(Stage.INSTALLING), record.installed_at),
        "agent": _seconds(record.installed_at, entered.get(Stage.READY)),
    }


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
