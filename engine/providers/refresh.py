"""Read a provider's current offer from its API and write it as a catalog file.

Uses the official SDKs (hcloud, pydo) through the inventory's clients, which retry and pace
requests; they are imported inside the fetchers only, so validation never loads them.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

from engine.catalog import Catalog, catalog_from_json, load_catalog, refreshed_catalog_path
from engine.errors import EngineError
from engine.providers.retry import ApiCalls, RetryPolicy
from engine.secrets import read_token
from engine.state.files import private_dir


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def _monthly(prices: list[dict[str, Any]]) -> dict[str, float]:
    return {p["location"]: round(float(p["price_monthly"]["net"]), 4) for p in prices}


def fetch_hcloud(token: str, endpoint: str | None = None, token_env: str = "") -> Catalog:
    """Server types (with net monthly prices per location), locations, system images, LB types."""
    from engine.providers.hcloud.inventory import hcloud_client, provider_errors

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
            "updated": _today(),
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


def fetch_digitalocean(token: str, endpoint: str | None = None, token_env: str = "") -> Catalog:
    """Sizes (with monthly prices, offered regions), regions and distribution images."""
    from engine.providers.digitalocean.inventory import DigitalOceanApi, provider_errors

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
            "updated": _today(),
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


FETCHERS = {"hcloud": fetch_hcloud, "digitalocean": fetch_digitalocean}


def refresh_catalog(
    provider: str, *, token_env: str, state_dir: Path, endpoint: str | None = None
) -> tuple[Catalog, Path]:
    """Fetch `provider`'s catalog and write it to the state directory. Returns it and its path."""
    if provider not in FETCHERS:
        raise EngineError(
            f"{provider}: only hcloud and digitalocean catalogs can be refreshed "
            "(the local catalog is fixed)"
        )
    catalog = FETCHERS[provider](read_token(token_env), endpoint, token_env)
    path = refreshed_catalog_path(state_dir, provider)
    private_dir(state_dir, path.parent.name)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(catalog.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    load_catalog.cache_clear()
    return catalog, path
