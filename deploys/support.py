"""What every deploy module uses: the type of an operation's commands, and `skip`.

`skip` records things a deploy leaves out on a host for a reason (swap in a container, ...);
the install result reports them per host, so "not done, and why" is never silent.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from pyinfra import host

Commands = Generator[Any, None, None]

_SKIPPED: dict[str, list[str]] = {}


def skip(reason: str) -> None:
    """Leave something out on the current host for `reason`."""
    host.noop(reason)
    reasons = _SKIPPED.setdefault(host.name, [])
    if reason not in reasons:
        reasons.append(reason)


def skipped_on(name: str) -> tuple[str, ...]:
    """What was left out on host `name`, and why, in the order it was decided."""
    return tuple(_SKIPPED.get(name, ()))
