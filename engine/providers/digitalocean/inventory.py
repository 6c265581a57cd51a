"""DigitalOcean inventory: the fleet's droplets, read with paged list calls.

Owned droplets come from `GET /v2/droplets?tag_name=fleet:<name>`, 200 per page (the API's
maximum): 1,000 droplets cost 5 requests. Droplets without the `managed-by:fleet-engine` tag
are left out (the API filters by one tag only). Labels are tags `key:value` (the engine's
`fleet-member:` tag aside). Firewall membership (`GET /v2/firewalls`) and VPC names
(`GET /v2/vpcs`) cost one paged list each, and only when the spec declares firewalls or
networks; they are read back through engine.providers.naming (a VPC per region and a firewall
per group stand for one spec network or firewall; the engine's own firewalls are left out).
Every droplet sits in its region's default VPC unless told otherwise, and default VPCs are not
reported as networks.

Droplet names are not unique on DigitalOcean and ownership is by tags, so a droplet of
someone else called `web-4` does not block ours: `read_unowned` has nothing to find.

List lag: a droplet created moments ago can be missing from list calls for a few seconds.
`list_lag_s` tells the diff how long to trust the state store's record of a fresh create
instead of planning it again.

Every request goes through the client of engine.providers.digitalocean.client (retried and
paced by engine.providers.retry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from typing import Any

from engine.model import (
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Fleet,
    Image,
    ImageKind,
    Labels,
    ProviderName,
)
from engine.providers import ActualServer, InventoryPage, engine_name, without_fleet_id
from engine.providers.digitalocean.client import (
    PAGE_SIZE,
    DigitalOceanApi,
    page_of,
    provider_errors,
)
from engine.providers.digitalocean.naming import is_member_tag
from engine.providers.naming import spec_resources
from engine.providers.retry import ApiCalls, RetryPolicy

LIST_LAG_S = 60.0


def tags_to_labels(tags: list[str]) -> Labels:
    """Tags `key:value` as labels; a tag without a colon is a label with an empty value.
    The tag the engine's firewalls select a group by is not a label."""
    pairs = (tag.partition(":") for tag in tags if not is_member_tag(tag))
    return tuple(sorted((key, value) for key, _, value in pairs))


def _image(raw: dict[str, Any] | None) -> Image | None:
    if not raw:
        return None
    kind = raw.get("type")
    if kind == "custom":
        return Image(kind=ImageKind.CUSTOM, name=str(raw.get("name", raw.get("id"))))
    if kind in ("snapshot", "backup"):
        labels = tags_to_labels(raw.get("tags") or [])
        return Image(kind=ImageKind.SNAPSHOT, name=str(raw.get("id")), labels=labels)
    return Image(kind=ImageKind.NAME, name=str(raw.get("slug") or raw.get("id")))


def _address(droplet: dict[str, Any], version: str, kind: str) -> list[str]:
    networks = droplet.get("networks") or {}
    return [n["ip_address"] for n in networks.get(version, ()) if n.get("type") == kind]


class DigitalOceanReader:
    """Reads one fleet's droplets from one DigitalOcean account."""

    provider = ProviderName.DIGITALOCEAN
    list_lag_s = LIST_LAG_S

    def __init__(self, fleet: Fleet, api: DigitalOceanApi, calls: ApiCalls) -> None:
        self.fleet = fleet
        self.api = api
        self.calls = calls

    def read_servers(self) -> tuple[ActualServer, ...]:
        client = self.api.client
        managed = f"{LABEL_MANAGED_BY}:{MANAGED_BY}"
        with provider_errors(self.fleet.provider.token_env):
            droplets = [
                d
                for d in self.api.list_all(
                    client.droplets.list,
                    "droplets",
                    tag_name=f"{LABEL_FLEET}:{self.fleet.name}",
                )
                if managed in d.get("tags", ())
            ]
            firewalls = (
                self.api.list_all(client.firewalls.list, "firewalls")
                if self.fleet.firewalls and droplets
                else []
            )
            vpcs = (
                {
                    v["id"]: v["name"]
                    for v in self.api.list_all(client.vpcs.list, "vpcs")
                    if not v.get("default")
                }
                if self.fleet.networks and droplets
                else {}
            )
        return tuple(self._actual(d, firewalls, vpcs) for d in droplets)

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        return ()

    def read_page(self, page: int) -> InventoryPage:
        managed = f"{LABEL_MANAGED_BY}:{MANAGED_BY}"
        with provider_errors(self.fleet.provider.token_env):
            body = self.api.client.droplets.list(
                per_page=PAGE_SIZE,
                page=page,
                tag_name=f"{LABEL_FLEET}:{self.fleet.name}",
                **self.api.insecure,
            )
        listed, paging = page_of(body, "droplets", page)
        droplets = [d for d in listed if managed in d.get("tags", ())]
        return InventoryPage(
            servers=tuple(self._actual(d, [], {}) for d in droplets), next_page=paging.next
        )

    def _actual(
        self, droplet: dict[str, Any], firewalls: list[dict[str, Any]], vpcs: dict[str, str]
    ) -> ActualServer:
        tags = droplet.get("tags") or []
        labels, fleet_id = without_fleet_id(tags_to_labels(tags))
        ipv4 = _address(droplet, "v4", "public")
        ipv6 = _address(droplet, "v6", "public")
        vpc = vpcs.get(droplet.get("vpc_uuid") or "")
        created = droplet.get("created_at")
        return ActualServer(
            name=engine_name(labels, droplet["name"]),
            provider_id=str(droplet["id"]),
            labels=labels,
            server_type=droplet.get("size_slug") or droplet.get("size", {}).get("slug", ""),
            image=_image(droplet.get("image")),
            location=(droplet.get("region") or {}).get("slug", ""),
            status=droplet.get("status", ""),
            ipv4=ipv4[0] if ipv4 else None,
            ipv6=ipv6[0] if ipv6 else None,
            private_ips=tuple(_address(droplet, "v4", "private")),
            disk_gb=int(droplet.get("disk") or 0),
            backups="backups" in (droplet.get("features") or ())
            or droplet.get("next_backup_window") is not None,
            firewalls=spec_resources(
                self.fleet.name,
                [
                    f["name"]
                    for f in firewalls
                    if droplet["id"] in (f.get("droplet_ids") or ())
                    or set(f.get("tags") or ()) & set(tags)
                ],
            ),
            networks=spec_resources(self.fleet.name, [vpc] if vpc else []),
            created=dt.datetime.fromisoformat(created) if created else None,
            fleet_id=fleet_id,
        )


def open_reader(fleet: Fleet, token: str, policy: RetryPolicy) -> DigitalOceanReader:
    """The DigitalOcean reader for `fleet` (endpoint from provider.endpoint, if set)."""
    calls = ApiCalls()
    return DigitalOceanReader(
        fleet, DigitalOceanApi(token, fleet.provider.endpoint, policy, calls), calls
    )
