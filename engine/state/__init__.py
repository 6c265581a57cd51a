"""The state store: what the engine knows about its servers beyond what the provider says.

One record per server (lifecycle stage, addresses, what was rendered and installed for it),
one row per lifecycle transition (so each step's duration can be computed), an event
history, and the exclusive stack locks that mutating commands hold.

The records here are plain frozen values, importable without SQLAlchemy, so the pure diff
can take them. The store itself is `engine.state.store.Store` (SQLite file by default,
PostgreSQL by URL); its tables and migrations are in `engine.state.schema`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from engine.model import Labels, Stage


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerRecord:
    """What the store holds for one server of one fleet."""

    fleet: str
    name: str
    group: str
    provider: str
    provider_id: str = ""
    location: str = ""
    server_type: str = ""
    image: str = ""
    stage: Stage = Stage.REQUESTED
    stage_reason: str = ""
    ipv4: str | None = None
    ipv6: str | None = None
    private_ips: tuple[str, ...] = ()
    labels: Labels = ()
    user_data_hash: str | None = None
    install_hash: str | None = None
    host_keys: Labels = ()
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A server entered `stage` at `at`."""

    fleet: str
    server: str
    stage: Stage
    at: dt.datetime
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One entry of a fleet's history (`kind` is a dotted noun such as `lock.released`)."""

    id: int
    fleet: str
    kind: str
    message: str
    at: dt.datetime
    server: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Lock:
    """The exclusive lock on a stack (one fleet), held by one mutating command."""

    stack: str
    lock_id: str
    holder: str
    host: str
    pid: int
    command: str
    acquired_at: dt.datetime


def stage_durations(transitions: Sequence[Transition]) -> tuple[tuple[Stage, float], ...]:
    """How long a server spent in each stage it has left, in seconds, in order.

    >>> # booting at 10:00:00, phoned_home at 10:00:04 -> ((Stage.BOOTING, 4.0),)
    """
    ordered = sorted(transitions, key=lambda t: t.at)
    return tuple(
        (current.stage, (following.at - current.at).total_seconds())
        for current, following in pairwise(ordered)
    )
