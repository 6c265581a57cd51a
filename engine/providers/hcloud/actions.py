"""Server actions on Hetzner Cloud through the official `hcloud` SDK.

    reboot     `reboot` (ACPI)
    poweroff   `poweroff`: the power is cut, no shutdown
    poweron    `poweron`
    rebuild    `rebuild` from a system image or the newest snapshot with the labels; it takes
               new user_data
    snapshot   `create_image` (type snapshot, with the fleet's labels); listed by them
               (`engine destroy` shows them) and deleted (`--delete-snapshots`)
    delete     the server (an orphan the plan deletes)

An action is `running` (with a progress percentage), then `success` or `error`
(`GET /actions/{id}`); engine.providers.cloud.actions waits on it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from engine.errors import EngineError
from engine.model import (
    LABEL_FLEET,
    LABEL_FLEET_ID,
    LABEL_MANAGED_BY,
    LABEL_SERVER,
    MANAGED_BY,
    Fleet,
    Image,
    ImageKind,
    Labels,
    ProviderName,
)
from engine.providers import Snapshot
from engine.providers.cloud.actions import ActionState, ActionStatus
from engine.providers.hcloud.client import hcloud_client, provider_errors
from engine.providers.retry import ApiCalls, RetryPolicy
from engine.providers.seam import Signal

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
        self.client = hcloud_client(token, fleet.provider.endpoint, policy, ApiCalls())

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
        with provider_errors(self.fleet.provider.token_env):
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
        with provider_errors(self.fleet.provider.token_env):
            return _hcloud_state(self.client.actions.get_by_id(int(action_id)))

    def delete(self, provider_id: str) -> ActionState:
        from hcloud.servers import Server

        with provider_errors(self.fleet.provider.token_env):
            return _hcloud_state(self.client.servers.delete(Server(id=int(provider_id))))

    def snapshots(self) -> tuple[Snapshot, ...]:
        selector = f"{LABEL_FLEET}={self.fleet.name},{LABEL_MANAGED_BY}={MANAGED_BY}"
        with provider_errors(self.fleet.provider.token_env):
            found = self.client.images.get_all(label_selector=selector, type=["snapshot"])
        return tuple(
            Snapshot(
                id=str(image.id),
                name=f"{image.description} (id {image.id})",
                server=(image.labels or {}).get(LABEL_SERVER, ""),
                size_gb=float(image.image_size or 0),
                fleet_id=(image.labels or {}).get(LABEL_FLEET_ID, ""),
            )
            for image in sorted(found, key=lambda i: str(i.description))
        )

    def delete_snapshot(self, snapshot_id: str) -> None:
        from hcloud.images import Image as HcloudImage

        with provider_errors(self.fleet.provider.token_env):
            self.client.images.delete(HcloudImage(id=int(snapshot_id)))

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


def open_actions(fleet: Fleet, token: str, policy: RetryPolicy) -> HcloudActions:
    """The Hetzner Cloud actions for `fleet` (endpoint from the spec's provider.endpoint)."""
    return HcloudActions(fleet, token, policy)
