"""Day-2 actions on cloud servers, and waiting on them: what both clouds share. Each cloud's
own, through its SDK, is in engine/providers/<name>/actions.py (`open_actions`).

    actions = provider_actions(fleet, token)            # engine.providers.registry
    started = actions.start("4711", Signal.REBOOT)      # POST .../actions: an action, running
    done = wait_for_action(actions, started, timeout_s=600, on_progress=show)

Both providers answer a server action with an action that runs for a while and then succeeds
or fails: Hetzner's `running` (with a progress percentage), `success` or `error`
(`GET /actions/{id}`), DigitalOcean's `in-progress`, `completed` or `errored`
(`GET /v2/actions/{id}`). `wait_for_action` asks again every few seconds until the action
ends or the timeout passes; its clock and sleep are injectable.

    reboot     Hetzner `reboot` (ACPI), DigitalOcean `reboot` (graceful)
    poweroff   Hetzner `poweroff`, DigitalOcean `power_off`: the power is cut, no shutdown
    poweron    Hetzner `poweron`, DigitalOcean `power_on`
    rebuild    the disk made anew from an image; Hetzner also takes new user_data
    snapshot   Hetzner `create_image` (type snapshot, with labels), DigitalOcean `snapshot`
               (listed by the fleet's labels and deleted on Hetzner; a DigitalOcean snapshot
               takes no tags, so the engine cannot tell which are the fleet's)
    delete     a server the fleet's stack does not hold (an orphan the plan deletes)

Requests go through each provider's client like the readers' (engine.providers.retry: rate
limits, 5xx, timeouts); SDK errors become ProviderErrors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from engine.errors import EngineError
from engine.model import Image, Labels, ProviderName
from engine.providers import Snapshot
from engine.providers.seam import Signal

POLL_S = 1.0


class ActionStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    ERROR = "error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActionState:
    """A provider action as last seen. `progress` is a percentage where the provider gives one;
    `image` the id of the image a snapshot makes, where the provider says it at once."""

    id: str
    command: str
    status: ActionStatus
    progress: int | None = None
    error: str = ""
    image: str = ""


class ActionTimedOut(EngineError):
    """The provider's action did not end before the timeout (it may still end later)."""


class ProviderActions(Protocol):
    """Starts actions on one provider's servers and reads how they are going."""

    provider: ProviderName

    def start(
        self,
        provider_id: str,
        signal: Signal,
        *,
        image: Image | None = None,
        user_data: str | None = None,
        snapshot: str = "",
        labels: Labels = (),
    ) -> ActionState:
        """Start `signal` on the server; `image` is what a rebuild uses, `user_data` what a
        rebuild gives it where the provider takes it, `snapshot` the name (or description)
        and `labels` the labels of a snapshot."""
        ...

    def get(self, action_id: str) -> ActionState:
        """The action as the provider reports it now."""
        ...

    def takes_user_data(self) -> bool:
        """Whether a rebuild takes new user_data (else it keeps the server's first)."""
        ...

    def delete(self, provider_id: str) -> ActionState | None:
        """Delete the server; the action to wait on, where the provider gives one."""
        ...

    def snapshots(self) -> tuple[Snapshot, ...]:
        """The fleet's snapshots, found by its ownership labels (none where the provider
        cannot label a snapshot)."""
        ...

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete one snapshot."""
        ...


def wait_for_action(
    actions: ProviderActions,
    started: ActionState,
    *,
    timeout_s: float,
    poll_s: float = POLL_S,
    on_progress: Callable[[ActionState], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ActionState:
    """Ask about the action until it succeeds or fails; its last state (an error is returned,
    not raised). Raises ActionTimedOut when it is still running after `timeout_s`."""
    deadline = clock() + timeout_s
    state = started
    while state.status is ActionStatus.RUNNING:
        if on_progress is not None:
            on_progress(state)
        if clock() >= deadline:
            raise ActionTimedOut(
                f"the {state.command} action {state.id} at {actions.provider} did not end "
                f"within {timeout_s:g} s; it may still end: `engine status` shows the server"
            )
        sleep(min(poll_s, max(0.0, deadline - clock())))
        state = replace(actions.get(state.id), image=state.image)
    return state
