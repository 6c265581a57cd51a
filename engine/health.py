"""What the provider and the agent say of a server now, as the plan weighs it. Pure.

The state store's stage is history and intent; these are the facts a plan starts from:

    power_of(status)   on, off or busy, from the provider's status word (every provider's)
    AgentSeen          what the agent said: a heartbeat within its window, or, asked now,
                       a healthy answer, silence (refused, closed, an error) or no way through
                       from here (no answer in time)

A ready record for a machine that is off is not ready (the plan powers it on); a ready record
whose agent is silent is not ready either (the plan reinstalls it). An agent the engine cannot
reach from where it runs is not judged: the plan warns instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

# Heartbeats an agent may miss before it counts as silent (the monitor marks a ready server
# unhealthy after as many).
HEARTBEAT_MISSES = 3


class Power(StrEnum):
    """A machine's power as its provider reports it."""

    ON = "on"
    OFF = "off"
    BUSY = "busy"  # being made, started, stopped, rebuilt or moved: neither, for now


# Docker: exited (stopped or killed), created (never started), dead; Hetzner: off;
# DigitalOcean: off, archive.
_OFF = frozenset({"exited", "created", "dead", "off", "archive"})
# Docker and Hetzner: running; DigitalOcean: active.
_ON = frozenset({"running", "active"})


def power_of(status: str) -> Power:
    """The power of a machine whose provider says `status` (Docker's, Hetzner's or
    DigitalOcean's word).

    >>> power_of("exited"), power_of("active"), power_of("initializing")
    (<Power.OFF: 'off'>, <Power.ON: 'on'>, <Power.BUSY: 'busy'>)
    """
    if status in _ON:
        return Power.ON
    if status in _OFF:
        return Power.OFF
    return Power.BUSY


class AgentAnswer(StrEnum):
    HEARD = "heard"  # a heartbeat arrived within the window: not asked
    ANSWERED = "answered"  # asked now: healthy
    SILENT = "silent"  # asked now: refused, closed, or answered with an error
    UNREACHABLE = "unreachable"  # asked now: no answer in time (a firewall, from here)


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSeen:
    """What one server's agent said: `answer`, its last heartbeat, and in words why it is
    silent or unreachable."""

    answer: AgentAnswer
    last_heartbeat_at: dt.datetime | None = None
    detail: str = ""


def heartbeat_window_s(heartbeat_s: int) -> float:
    """How long an agent that beats every `heartbeat_s` may stay unheard and still count as
    alive."""
    return float(heartbeat_s * HEARTBEAT_MISSES)


def is_heard(last_heartbeat_at: dt.datetime | None, heartbeat_s: int, now: dt.datetime) -> bool:
    """Whether a heartbeat at `last_heartbeat_at` is recent enough at `now`."""
    if last_heartbeat_at is None:
        return False
    return (now - last_heartbeat_at).total_seconds() <= heartbeat_window_s(heartbeat_s)
