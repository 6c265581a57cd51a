"""Read a provider's current offer from its API and write it as a catalog file.

Uses the official SDKs (hcloud, pydo), imported here only, so validation never loads them.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

from engine.catalog import Catalog, catalog_from_json, load_catalog, refreshed_catalog_path
from engine.errors import EngineError, ProviderError
from engine.secrets import read_token

DO_PAGE_SIZE = 200


def _today() -> str:
    return dt.datetime.now(dt.UTC).date().isoformat()


def _monthly(prices: list[dict[str, Any]]) -> dict[str, float]:
    return {p["location"]: round(float(p["price_monthly"]["net"]), 4) for p in prices}


def fetch_hcloud(token: str, endpoint: str | None = None) -> Catalog:
    """Server types (with net monthly prices per location), locations, system images, LB types."""
    from hcloud import APIException, Client

    client = Client(token=token, api_endpoint=endpoint or "https://api.hetzner.cloud/v1")
    try:
        locations = client.locations.get_all()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            server_types = [t for t in client.server_types.get_all() if not t.deprecated]
        images = client.images.get_all(type=["system"])
        lb_types = client.load_balancer_types.get_all()
    except APIException as exc:
        raise ProviderError(
            "hcloud", str(exc.message), code=str(exc.code), correlation_id=exc.correlation_id or ""
        ) from None
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


def _do_pages(call: Any, key: str) -> list[dict[str, Any]]:
    """Every item of a paged DigitalOcean list call, 200 per page."""
    items: list[dict[str, Any]] = []
    page = 1
    while True:
        body = call(per_page=DO_PAGE_SIZE, page=page)
        items.extend(body.get(key, []))
        if not body.get("links", {}).get("pages", {}).get("next"):
            return items
        page += 1


def fetch_digitalocean(token: str, endpoint: str | None = None) -> Catalog:
    """Sizes (with monthly prices, offered regions), regions and distribution images."""
    from azure.core.exceptions import HttpResponseError
    from pydo import Client

    kwargs: dict[str, Any] = {"endpoint": endpoint} if endpoint else {}
    client = Client(token, **kwargs)
    # azure-core refuses to send a bearer token over http; a plain-http endpoint is a local
    # API double, never the real API.
    insecure: dict[str, Any] = (
        {"enforce_https": False} if endpoint and endpoint.startswith("http:") else {}
    )
    try:
        regions = _do_pages(lambda **kw: client.regions.list(**kw, **insecure), "regions")
        sizes = _do_pages(lambda **kw: client.sizes.list(**kw, **insecure), "sizes")
        images = _do_pages(
            lambda **kw: client.images.list(type="distribution", **kw, **insecure), "images"
        )
    except HttpResponseError as exc:
        body = _error_body(exc)
        raise ProviderError(
            "digitalocean",
            str(body.get("message", exc.reason)),
            code=str(body.get("id", exc.status_code)),
            correlation_id=str(body.get("request_id", "")),
        ) from None
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


def _error_body(exc: Any) -> dict[str, Any]:
    """DigitalOcean's error JSON ({"id", "message", "request_id"}), or {} if there is none."""
    try:
        body = json.loads(exc.response.text())
    except (AttributeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


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
    catalog = FETCHERS[provider](read_token(token_env), endpoint)
    path = refreshed_catalog_path(state_dir, provider)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(catalog.to_json(), indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)
    load_catalog.cache_clear()
    return catalog, path
