"""Hetzner Cloud's current offer, read from its API as a catalog (`engine catalog refresh`)."""

from __future__ import annotations

import datetime as dt
import warnings
from typing import Any

from engine.catalog import Catalog, catalog_from_json, load_catalog
from engine.providers.hcloud.client import hcloud_client, provider_errors
from engine.providers.retry import ApiCalls, RetryPolicy


def _monthly(prices: list[dict[str, Any]]) -> dict[str, float]:
    return {p["location"]: round(float(p["price_monthly"]["net"]), 4) for p in prices}


def fetch_catalog(token: str, endpoint: str | None = None, token_env: str = "") -> Catalog:
    """Server types (with net monthly prices per location), locations, system images, LB types."""
    client = hcloud_client(token, endpoint, RetryPolicy(), ApiCalls())
    with provider_errors(token_env):
        locations = client.locations.get_all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server_types = [t for t in client.server_types.get_all() if not t.deprecated]
        images = client.images.get_all(type=["system"])
        lb_types = client.load_balancer_types.get_all()
    architectures: dict[str, set[str]] = {}
    for image in images:
        if image.name and image.architecture:
            architectures.setdefault(image.name, set()).add(image.architecture)
    shipped = load_catalog("hcloud")
    return catalog_from_json(
        {
            "provider": "hcloud",
            "currency": "EUR",
            "updated": dt.datetime.now(dt.UTC).date().isoformat(),
            "source": f"refreshed from {endpoint or 'the Hetzner Cloud API'}",
            "backup_percent": shipped.backup_percent,
            "ipv4_monthly": shipped.ipv4_monthly,
            "locations": [
                {
                    "name": loc.name,
                    "city": loc.city,
                    "country": loc.country,
                    "network_zone": loc.network_zone,
                }
                for loc in locations
            ],
            "server_types": [
                {
                    "name": t.name,
                    "cores": t.cores,
                    "memory_gb": float(t.memory or 0),
                    "disk_gb": t.disk,
                    "architecture": t.architecture,
                    "cpu_type": t.cpu_type,
                    "prices": _monthly(t.prices or []),
                }
                for t in server_types
            ],
            "images": [
                {"name": name, "architectures": sorted(archs)}
                for name, archs in sorted(architectures.items())
            ],
            "load_balancer_types": [
                {"name": b.name, "prices": _monthly(b.prices or [])} for b in lb_types
            ],
        }
    )
