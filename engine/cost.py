"""What a server costs a month, and what it takes, from the provider's catalog. Pure.

Monthly price = the server type's price in its location (Hetzner prices differ by location),
plus the provider's backup surcharge (a percentage of the server price) when backups are on,
plus the provider's monthly price of a public IPv4 address when it has one (Hetzner bills
primary IPv4 addresses separately; DigitalOcean includes it, its catalog says 0).
"""

from __future__ import annotations

from engine.catalog import Catalog
from engine.plan import Usage


def monthly_price(
    catalog: Catalog, server_type: str, location: str, *, backups: bool, ipv4: bool
) -> float | None:
    """The monthly price in the catalog's currency, or None if the catalog has no price."""
    kind = catalog.server_types.get(server_type)
    if kind is None or location not in kind.prices:
        return None
    base = kind.prices[location]
    surcharge = base * catalog.backup_percent / 100 if backups else 0.0
    address = catalog.ipv4_monthly if ipv4 else 0.0
    return round(base + surcharge + address, 4)


def server_usage(
    catalog: Catalog,
    server_type: str,
    location: str,
    *,
    backups: bool,
    ipv4: bool,
    disk_gb: float = 0,
) -> Usage:
    """One server's usage; `disk_gb` overrides the type's disk (a disk kept after a resize).

    Unknown types and prices count as zero; the diff warns about them.
    """
    kind = catalog.server_types.get(server_type)
    price = monthly_price(catalog, server_type, location, backups=backups, ipv4=ipv4)
    return Usage(
        servers=1,
        vcpus=kind.cores if kind else 0,
        memory_gb=kind.memory_gb if kind else 0.0,
        disk_gb=max(disk_gb, kind.disk_gb if kind else 0),
        monthly_cost=price or 0.0,
    )


def load_balancer_price(catalog: Catalog, lb_type: str, location: str) -> float | None:
    """A load balancer's monthly price in the catalog's currency, or None if it has none."""
    kind = catalog.load_balancer_types.get(lb_type)
    if kind is None or location not in kind.prices:
        return None
    return float(kind.prices[location])
