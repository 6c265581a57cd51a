"""Droplet actions on DigitalOcean through the official `pydo` SDK.

    reboot     `reboot` (graceful)
    poweroff   `power_off`: the power is cut, no shutdown
    poweron    `power_on`
    rebuild    `rebuild` from a slug or the newest private image with the tags (or the name);
               the droplet keeps its first user_data
    snapshot   `snapshot`, named `<fleet>-<server>-<UTC time>`; the action takes no tags, so
               `engine destroy` cannot list the fleet's snapshots (they are kept)
    delete     the droplet (an orphan the plan deletes)

An action is `in-progress`, then `completed` or `errored` (`GET /v2/actions/{id}`);
engine.providers.cloud.actions waits on it.
"""

from __future__ import annotations

from typing import Any

from engine.errors import EngineError
from engine.model import Fleet, Image, ImageKind, Labels, ProviderName
from engine.providers import Snapshot
from engine.providers.cloud.actions import ActionState, ActionStatus
from engine.providers.digitalocean.client import DigitalOceanApi, provider_errors
from engine.providers.retry import ApiCalls, RetryPolicy
from engine.providers.seam import Signal

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
        self.api = DigitalOceanApi(token, fleet.provider.endpoint, policy, ApiCalls())

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
        with provider_errors(self.fleet.provider.token_env):
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
        with provider_errors(self.fleet.provider.token_env):
            answer = self.api.client.actions.get(int(action_id), **self.api.insecure)
        return _do_state(answer["action"])

    def delete(self, provider_id: str) -> None:
        with provider_errors(self.fleet.provider.token_env):
            self.api.client.droplets.destroy(int(provider_id), **self.api.insecure)

    def snapshots(self) -> tuple[Snapshot, ...]:
        return ()  # a droplet snapshot takes no tags: nothing says which are the fleet's

    def delete_snapshot(self, snapshot_id: str) -> None:
        raise EngineError("DigitalOcean snapshots carry no fleet tags; the engine lists none")

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


def open_actions(fleet: Fleet, token: str, policy: RetryPolicy) -> DigitalOceanActions:
    """The DigitalOcean actions for `fleet` (endpoint from the spec's provider.endpoint)."""
    return DigitalOceanActions(fleet, token, policy)
