"""Actual state: what servers a provider has for a fleet, read with paged list calls.

One small interface, `InventoryReader`, one frozen record, `ActualServer`. A reader lists the
fleet's owned servers (those carrying the fleet's ownership labels or tags) with label- or
tag-filtered paged list calls, never one GET per server, and honours the provider's rate
limits (see engine.providers.retry). SDK types stay inside each reader's module; nothing here
imports an SDK, so the diff and the CLI can import this freely.

    reader = inventory_reader(fleet, token=...)    # engine.providers.registry
    owned = reader.read_servers()
    clashes = reader.read_unowned(["web-4"])   # names a create would take
    reader.calls                               # what the reads cost
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol

from engine.model import LABEL_SERVER, Image, Labels, ProviderName
from engine.providers.retry import ApiCalls


@dataclass(frozen=True, slots=True, kw_only=True)
class ActualServer:
    """One server as the provider reports it.

    `name` is the engine's name for it (its fleet-server label or tag; the provider's name if
    it has none). `image` is None when the provider no longer knows the image (deleted since).
    `firewalls` and `networks` are the fleet's names for the spec's firewalls and networks
    (`fleet_resource_name`, read back through engine.providers.naming), sorted; the engine's own
    firewalls and default VPCs are left out, and one the fleet did not name keeps its
    provider-side name.
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


def engine_name(labels: Labels, provider_name: str) -> str:
    """The server's name in the fleet: its fleet-server label if set, else the provider's."""
    return dict(labels).get(LABEL_SERVER) or provider_name


class InventoryReader(Protocol):
    """Reads one fleet's servers from one provider account."""

    provider: ProviderName
    # Seconds during which a server created by the engine may still be missing from list
    # calls (DigitalOcean's list lag); the diff trusts the state store's record meanwhile.
    list_lag_s: float
    calls: ApiCalls

    def read_servers(self) -> tuple[ActualServer, ...]:
        """Every server that carries the fleet's ownership labels/tags."""
        ...

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        """Servers not owned by the fleet whose names are in `names` (name collisions)."""
        ...

    def read_page(self, page: int) -> InventoryPage:
        """One page (1-based) of the fleet's owned servers, for a poller that reads a page
        at a time and carries on where it stopped. Firewall and network names are not
        resolved (they cost more calls): those fields hold provider ids here."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryPage:
    """One page of a paged list: its servers and the next page's number (None: the last)."""

    servers: tuple[ActualServer, ...]
    next_page: int | None
