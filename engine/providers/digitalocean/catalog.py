"""DigitalOcean's current offer, read from its API as a catalog (`engine catalog refresh`)."""

from __future__ import annotations

import datetime as dt

from engine.catalog import Catalog, catalog_from_json, load_catalog
from engine.providers.digitalocean.client import DigitalOceanApi, provider_errors
from engine.providers.retry import ApiCalls, RetryPolicy


def fetch_catalog(token: str, endpoint: str | None = None, token_env: str = "") -> Catalog:
    """Sizes (with monthly prices, offered regions), regions and distribution images."""
    api = DigitalOceanApi(token, endpoint, RetryPolicy(), ApiCalls())
    with provider_errors(token_env):
        regions = api.list_all(api.client.regions.list, "regions")
        sizes = api.list_all(api.client.sizes.list, "sizes")
        images = api.list_all(api.client.images.list, "images", type="distribution")
    shipped = load_catalog("digitalocean")
    return catalog_from_json(
        {
            "provider": "digitalocean",
            "currency": "USD",
            "updated": dt.datetime.now(dt.UTC).date().isoformat(),
            "source": f"refreshed from {endpoint or 'the DigitalOcean API'}",
            "backup_percent": shipped.backup_percent,
            "ipv4_monthly": shipped.ipv4_monthly,
            "locations": [
                {"name": r["slug"], "city": r["name"], "country": "", "network_zone": r["slug"]}
                for r in regions
                if r.get("available", True)
            ],
            "server_types": [
                {
                    "name": s["slug"],
                    "cores": s["vcpus"],
                    "memory_gb": s["memory"] / 1024,
                    "disk_gb": s["disk"],
                    "architecture": "x86",
                    "cpu_type": "shared" if s["slug"].startswith("s-") else "dedicated",
                    "prices": {r: float(s["price_monthly"]) for r in s.get("regions", [])},
                }
                for s in sizes
                if s.get("available", True)
            ],
            "images": [
                {"name": i["slug"], "architectures": ["x86"]} for i in images if i.get("slug")
            ],
            "load_balancer_types": shipped.to_json()["load_balancer_types"],
        }
    )
