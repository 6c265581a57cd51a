"""Day-2 actions on Hetzner Cloud servers and DigitalOcean droplets through each provider's
SDK (hcloud, pydo), and waiting on them.

    actions = provider_actions(fleet, token)
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
    delete     a server the fleet's stack does not hold (an orphan the plan deletes)

Requests go through engine.providers.retry like the readers' (rate limits, 5xx, timeouts);
SDK errors become ProviderErrors.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from engine.errors import EngineError
from engine.model import Fleet, Image, ImageKind, Labels, ProviderName
from engine.providers.digitalocean import inventory as do_inventory
from engine.providers.hcloud import inventory as hcloud_inventory
from engine.providers.retry import ApiCalls, RetryPolicy
from engine.signals import Signal

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


# --- Hetzner Cloud ---------------------------------------------------------------------------

_HCLOUD_STATUS = {"running": ActionStatus.RUNNING, "success": ActionStatus.SUCCESS}


def _hcloud_state(action: Any, image: str = "") -> ActionState:
    error = action.error or {}
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    return ActionState(
        id=str(action.id),
        command=str(action.command),
        status=_HCLOUD_STATUS.get(str(action.status), ActionStatus.ERROR),
        progress=action.progress,
        error=message,
        image=image,
    )


class HcloudActions:
    """Server actions on Hetzner Cloud through the official `hcloud` SDK."""

    provider = ProviderName.HCLOUD

    def __init__(self, fleet: Fleet, token: str, policy: RetryPolicy) -> None:
        self.fleet = fleet
        self.client = hcloud_inventory.hcloud_client(
            token, fleet.provider.endpoint, policy, ApiCalls()
        )

    def takes_user_data(self) -> bool:
        return True

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
        from hcloud.servers import Server

        servers = self.client.servers
        server = Server(id=int(provider_id))
        with hcloud_inventory.provider_errors(self.fleet.provider.token_env):
            if signal is Signal.REBOOT:
                return _hcloud_state(servers.reboot(server))
            if signal is Signal.POWEROFF:
                return _hcloud_state(servers.power_off(server))
            if signal is Signal.POWERON:
                return _hcloud_state(servers.power_on(server))
            if signal is Signal.REBUILD:
                assert image is not None
                rebuilt = servers.rebuild(server, self._image(image), user_data=user_data)
                return _hcloud_state(rebuilt.action)
            made = servers.create_image(
                server, description=snapshot, type="snapshot", labels=dict(labels)
            )
            return _hcloud_state(made.action, image=str(made.image.id))

    def get(self, action_id: str) -> ActionState:
        with hcloud_inventory.provider_errors(self.fleet.provider.token_env):
            return _hcloud_state(self.client.actions.get_by_id(int(action_id)))

    def delete(self, provider_id: str) -> ActionState:
        from hcloud.servers import Server

        with hcloud_inventory.provider_errors(self.fleet.provider.token_env):
            return _hcloud_state(self.client.servers.delete(Server(id=int(provider_id))))

    def _image(self, image: Image) -> Any:
        """A system image by name, or the newest available snapshot with the labels."""
        from hcloud.images import Image as HcloudImage

        if image.kind is ImageKind.NAME:
            return HcloudImage(name=image.name)
        selector = ",".join(f"{key}={value}" for key, value in image.labels)
        found = self.client.images.get_all(
            label_selector=selector, type=["snapshot"], status=["available"]
        )
        if not found:
            raise EngineError(f"no available snapshot carries the labels {selector}")
        return max(found, key=lambda i: i.created or dt.datetime.min.replace(tzinfo=dt.UTC))


# --- DigitalOcean ----------------------------------------------------------------------------

_DO_TYPES = {
    Signal.REBOOT: "reboot",
    Signal.POWEROFF: "power_off",
    Signal.POWERON: "power_on",
    Signal.REBUILD: "rebuild",
    Signal.SNAPSHOT: "snapshot",
}
_DO_STATUS = {"in-progress": ActionStatus.RUNNING, "completed": ActionStatus.SUCCESS}


def _do_state(action: dict[str, Any]) -> ActionState:
    return ActionState(
        id=str(action["id"]),
        command=str(action.get("type", "")),
        status=_DO_STATUS.get(str(action.get("status")), ActionStatus.ERROR),
    )


class DigitalOceanActions:
    """Droplet actions on DigitalOcean through the official `pydo` SDK."""

    provider = ProviderName.DIGITALOCEAN

    def __init__(self, fleet: Fleet, token: str, policy: RetryPolicy) -> None:
        self.fleet = fleet
        self.api = do_inventory.DigitalOceanApi(token, fleet.provider.endpoint, policy, ApiCalls())

    def takes_user_data(self) -> bool:
        return False  # a rebuild keeps the droplet's first user_data

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
        body: dict[str, Any] = {"type": _DO_TYPES[signal]}
        with do_inventory.provider_errors(self.fleet.provider.token_env):
            if signal is Signal.REBUILD:
                assert image is not None
                body["image"] = self._image(image)
            elif signal is Signal.SNAPSHOT:
                body["name"] = snapshot
            answer = self.api.client.droplet_actions.post(
                int(provider_id), body=body, **self.api.insecure
            )
        return _do_state(answer["action"])

    def get(self, action_id: str) -> ActionState:
        with do_inventory.provider_errors(self.fleet.provider.token_env):
            answer = self.api.client.actions.get(int(action_id), **self.api.insecure)
        return _do_state(answer["action"])

    def delete(self, provider_id: str) -> None:
        with do_inventory.provider_errors(self.fleet.provider.token_env):
            self.api.client.droplets.destroy(int(provider_id), **self.api.insecure)

    def _image(self, image: Image) -> str | int:
        """A slug, or the id of the newest private image with the tags (or the name)."""
        if image.kind is ImageKind.NAME:
            return image.name
        wanted = {f"{key}:{value}" for key, value in image.labels}
        private = self.api.list_all(self.api.client.images.list, "images", private=True)
        found = [
            i
            for i in private
            if (image.kind is ImageKind.CUSTOM and i.get("name") == image.name)
            or (image.kind is ImageKind.SNAPSHOT and wanted <= set(i.get("tags") or ()))
        ]
        if not found:
            raise EngineError(f"DigitalOcean has no private image for {image.describe()}")
        return int(max(found, key=lambda i: str(i.get("created_at", "")))["id"])


def provider_actions(
    fleet: Fleet, token: str, policy: RetryPolicy | None = None
) -> ProviderActions:
    """The actions of `fleet`'s provider, with `token` (registered as a secret by the caller)."""
    if fleet.provider.name is ProviderName.HCLOUD:
        return HcloudActions(fleet, token, policy or RetryPolicy())
    if fleet.provider.name is ProviderName.DIGITALOCEAN:
        return DigitalOceanActions(fleet, token, policy or RetryPolicy())
    raise EngineError(f"the {fleet.provider.name} provider is no cloud: it has no cloud actions")
