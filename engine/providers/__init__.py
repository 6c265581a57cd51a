"""The providers: Hetzner Cloud, DigitalOcean and the local Docker provider, one folder each.

This module is what the pure core knows of them: `ActualServer`, one server as its provider
reports it, and `CloudResource`, one firewall, network, load balancer, DNS record, placement
group or SSH key in the one shape both the spec's side (stacks.declared) and the provider's
side (each reader's `read_resources`) are put in, which the diff compares. It imports no
SDK and does no I/O, so the diff, the plan and its rendering import it freely. The rest of
the package, bottom to top:

    seam.py       what the orchestrator and the control plane drive a provider through:
                  Backend, InventoryReader, Provisioner, and the run types (Site, RunOptions,
                  Signal, the FleetRun a backend reports to)
    retry.py      the one retry and rate-limit policy of every provider API call
    naming.py     what a fleet's resources are called at the clouds, and the way back
    hcloud/       Hetzner Cloud through `hcloud`: client, inventory, actions, catalog
    digitalocean/ DigitalOcean through `pydo`: client, inventory, actions, catalog, tags
    local/        servers as containers through docker-py: dockerd, images, machines, driver,
                  inventory, and its Backend
    cloud/        what both clouds share: the Pulumi-driven Backend, its runner (stacks/ are
                  its programs), waiting on actions
    registry.py   which module serves each provider (readers, actions, catalog fetchers)
    refresh.py    `engine catalog refresh`

An SDK is imported only inside its provider's folder, and only when a fleet of that provider
needs it: `engine validate` and `engine preview --against-ref` load none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from engine.model import LABEL_FLEET_ID, LABEL_SERVER, Image, Labels


@dataclass(frozen=True, slots=True, kw_only=True)
class ActualServer:
    """One server as the provider reports it.

    `name` is the engine's name for it (its fleet-server label or tag; the provider's name if
    it has none). `image` is None when the provider no longer knows the image (deleted since).
    `firewalls` and `networks` are the fleet's names for the spec's firewalls and networks
    (`fleet_resource_name`, read back through engine.providers.naming), sorted; the engine's own
    firewalls and default VPCs are left out, and one the fleet did not name keeps its
    provider-side name. `status` is the provider's word for its power (engine.health.power_of);
    `exit_code` and `stopped_at` say how and when it stopped, where the provider says (Docker
    does). `fleet_id` is the id of the fleet that made it (its fleet-id label or tag, "" on
    servers made before fleets had ids), kept out of `labels`.
    """

    name: str
    provider_id: str
    labels: Labels
    server_type: str
    image: Image | None
    location: str
    status: str
    ipv4: str | None = None
    ipv6: str | None = None
    private_ips: tuple[str, ...] = ()
    disk_gb: int = 0
    backups: bool = False
    firewalls: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()
    placement_group: str | None = None
    created: dt.datetime | None = None
    exit_code: int | None = None
    stopped_at: dt.datetime | None = None
    fleet_id: str = ""


def without_fleet_id(labels: Labels) -> tuple[Labels, str]:
    """`labels` without the fleet-id label, and its value ("" when there is none): the id
    says who owns a resource, it is no label the spec sets or the diff compares."""
    kept = tuple((key, value) for key, value in labels if key != LABEL_FLEET_ID)
    return kept, dict(labels).get(LABEL_FLEET_ID, "")


def engine_name(labels: Labels, provider_name: str) -> str:
    """The server's name in the fleet: its fleet-server label if set, else the provider's."""
    return dict(labels).get(LABEL_SERVER) or provider_name


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryPage:
    """One page of a paged list: its servers and the next page's number (None: the last)."""

    servers: tuple[ActualServer, ...]
    next_page: int | None


class ResourceKind(StrEnum):
    """The kinds of resource besides servers that a fleet declares."""

    FIREWALL = "firewall"
    NETWORK = "network"
    LOAD_BALANCER = "load_balancer"
    DNS_RECORD = "dns_record"
    PLACEMENT_GROUP = "placement_group"
    SSH_KEY = "ssh_key"


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudResource:
    """A resource other than a server, as the spec declares it or as its provider lists it.

    `name` is its name at the provider (engine.providers.naming); `properties` are what the
    diff compares, each as text (`rules`, `ip_range`, `services`...), in the same words on
    both sides. The declared side also says what the provider cannot change in place
    (`fixed`: a change there makes the resource anew), which servers hang on it (`servers`:
    named when a change disrupts them) and what a replacement does to them (`on_replace`;
    `replaces_servers`: they are made anew with it, as droplets are with their VPC),
    and the Pulumi resources the program declares for it (`logical`: names, or prefixes of
    its parts' names). A listed resource the fleet does not own (a key uploaded by someone
    else, reused by fingerprint) has `owned` False: it is compared, never deleted.
    """

    kind: ResourceKind
    name: str
    properties: tuple[tuple[str, str], ...]
    fixed: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    on_replace: str = ""
    replaces_servers: bool = False
    logical: tuple[str, ...] = ()
    provider_id: str = ""
    owned: bool = True

    def value(self, key: str) -> str:
        """One property's text ("" when it has none)."""
        return dict(self.properties).get(key, "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """An image `engine server snapshot` made of one of the fleet's servers, found by the
    fleet's ownership labels: `id` is what its provider deletes it by, `name` what a user
    knows it as (a local image's reference), `size_gb` its size (0 when not known),
    `fleet_id` the fleet id of the state directory that made it ("" for a snapshot made before
    snapshots carried one, or by a provider without labels)."""

    id: str
    name: str
    server: str
    size_gb: float = 0.0
    fleet_id: str = ""
