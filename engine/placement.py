"""Expand groups into named servers and place each one in a location.

Placement is a small scoring function, predictable rather than optimal (after Puchify's
scheduler). For each server, in index order, every allowed location gets a score:

    score(location) = (servers of this group already there, position in the group's list)

and the lowest score wins. The candidates are the group's locations where the catalog offers
its server type (validation refuses any other). With nothing pinned this is round-robin:
web-1 -> fsn1, web-2 -> nbg1, web-3 -> hel1, web-4 -> fsn1...

Stability: the score of server n depends only on servers 1..n-1, so growing a group never
moves an existing server, and shrinking removes the highest numbers. Servers that already
exist can be pinned to where they are (`pinned`), so editing the location list never moves a
running server that is still in an allowed location; new servers then fill the emptiest
locations. Placement groups (`placement: spread`) are failure domains of their own: one
spread group per server group, `<fleet>-<group>`.

A plan expands the same fleet with the same pins several times (its diff, the resources its
program would declare, its apps), and 10,000 servers take tens of milliseconds each time:
the last expansion is kept and given again for the same fleet and catalog (immutable) with
equal pins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from engine.catalog import Catalog
from engine.model import (
    LABEL_SERVER,
    Fleet,
    Group,
    Placement,
    Server,
    fleet_resource_name,
    ownership_labels,
    server_name,
)


def group_server_names(group: Group) -> list[str]:
    """The names of `group`'s servers in index order: web-1, web-2, ..."""
    return [server_name(group.name, n) for n in range(1, group.count + 1)]


def fleet_server_names(fleet: Fleet) -> list[str]:
    """The names of every server `fleet` wants, group by group, without placing them."""
    return [name for group in fleet.groups for name in group_server_names(group)]


def place_group(group: Group, catalog: Catalog, pinned: Mapping[str, str]) -> dict[str, str]:
    """Map each server name of `group` to a location.

    >>> # locations [fsn1, nbg1], count 3 -> web-1: fsn1, web-2: nbg1, web-3: fsn1
    """
    server_type = catalog.server_types.get(group.server_type)
    candidates = [
        loc for loc in group.locations if server_type is None or server_type.is_available(loc)
    ] or list(group.locations)
    rank = {loc: i for i, loc in enumerate(candidates)}
    load = dict.fromkeys(candidates, 0)
    names = group_server_names(group)
    placed: dict[str, str] = {}
    for name in names:
        location = pinned.get(name)
        if location is not None and location in load:
            placed[name] = location
            load[location] += 1
    for name in names:
        if name not in placed:
            best = min(candidates, key=lambda loc: (load[loc], rank[loc]))
            placed[name] = best
            load[best] += 1
    return {name: placed[name] for name in names}


@dataclass(frozen=True, slots=True)
class _Expansion:
    fleet: Fleet
    catalog: Catalog
    pinned: dict[str, str]
    servers: tuple[Server, ...]


_last: _Expansion | None = None


def expand_fleet(
    fleet: Fleet, catalog: Catalog, pinned: Mapping[str, str] | None = None
) -> tuple[Server, ...]:
    """Every desired server of `fleet`, in group order then index order.

    `pinned` maps names of servers that exist to their current location.
    """
    global _last
    # A copy: the caller's mapping may change after, the kept expansion must not.
    pins = dict(pinned or {})
    last = _last
    if last is not None and last.fleet is fleet and last.catalog is catalog and last.pinned == pins:
        return last.servers
    servers = _expand(fleet, catalog, pins)
    _last = _Expansion(fleet=fleet, catalog=catalog, pinned=pins, servers=servers)
    return servers


def _expand(fleet: Fleet, catalog: Catalog, pinned: Mapping[str, str]) -> tuple[Server, ...]:
    servers: list[Server] = []
    for group in fleet.groups:
        spread = (
            fleet_resource_name(fleet.name, group.name)
            if group.placement is Placement.SPREAD
            else None
        )
        # Only the server's own label tells one server of a group from the next: the others
        # are sorted once, and each server's goes in its place among them.
        shared = dict(group.labels)
        shared.update(ownership_labels(fleet.name, group.name, ""))
        ordered = sorted(shared.items())
        at = ordered.index((LABEL_SERVER, ""))
        first, last = tuple(ordered[:at]), tuple(ordered[at + 1 :])
        for index, (name, location) in enumerate(
            place_group(group, catalog, pinned).items(), start=1
        ):
            servers.append(
                Server(
                    name=name,
                    group=group.name,
                    index=index,
                    server_type=group.server_type,
                    image=group.image,
                    location=location,
                    labels=(*first, (LABEL_SERVER, name), *last),
                    placement_group=spread,
                    firewalls=group.firewalls,
                    networks=group.networks,
                    backups=group.backups,
                    public_ipv4=group.public_ipv4,
                    public_ipv6=group.public_ipv6,
                )
            )
    return tuple(servers)
