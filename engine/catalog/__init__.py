"""What each provider offers: server types with prices per location, locations, images.

A catalog ships with the package (one JSON file per provider) so that validation and
preview work offline. `engine catalog refresh PROVIDER` writes a fresh copy read from the
provider's API into the state directory; when that copy exists it is used instead.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from engine.errors import EngineError


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerType:
    name: str
    cores: int
    memory_gb: float
    disk_gb: int
    architecture: str
    cpu_type: str
    prices: Mapping[str, float]

    def is_available(self, location: str) -> bool:
        return location in self.prices


@dataclass(frozen=True, slots=True, kw_only=True)
class Location:
    name: str
    city: str
    country: str
    network_zone: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CatalogImage:
    name: str
    architectures: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadBalancerType:
    name: str
    prices: Mapping[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class Catalog:
    provider: str
    currency: str
    updated: str
    source: str
    backup_percent: float
    ipv4_monthly: float
    locations: Mapping[str, Location]
    server_types: Mapping[str, ServerType]
    images: Mapping[str, CatalogImage]
    load_balancer_types: Mapping[str, LoadBalancerType]

    def to_json(self) -> dict[str, Any]:
        """The catalog in the file format it is loaded from."""
        return {
            "provider": self.provider,
            "currency": self.currency,
            "updated": self.updated,
            "source": self.source,
            "backup_percent": self.backup_percent,
            "ipv4_monthly": self.ipv4_monthly,
            "locations": [
                {
                    "name": x.name,
                    "city": x.city,
                    "country": x.country,
                    "network_zone": x.network_zone,
                }
                for x in self.locations.values()
            ],
            "server_types": [
                {
                    "name": t.name,
                    "cores": t.cores,
                    "memory_gb": t.memory_gb,
                    "disk_gb": t.disk_gb,
                    "architecture": t.architecture,
                    "cpu_type": t.cpu_type,
                    "prices": dict(t.prices),
                }
                for t in self.server_types.values()
            ],
            "images": [
                {"name": i.name, "architectures": list(i.architectures)}
                for i in self.images.values()
            ],
            "load_balancer_types": [
                {"name": b.name, "prices": dict(b.prices)}
                for b in self.load_balancer_types.values()
            ],
        }


def catalog_from_json(raw: Mapping[str, Any]) -> Catalog:
    """Build a Catalog from its JSON form (see engine/catalog/hcloud.json)."""
    return Catalog(
        provider=raw["provider"],
        currency=raw["currency"],
        updated=raw["updated"],
        source=raw["source"],
        backup_percent=float(raw["backup_percent"]),
        ipv4_monthly=float(raw["ipv4_monthly"]),
        locations={x["name"]: Location(**x) for x in raw["locations"]},
        server_types={
            t["name"]: ServerType(**{**t, "prices": dict(t["prices"])}) for t in raw["server_types"]
        },
        images={
            i["name"]: CatalogImage(name=i["name"], architectures=tuple(i["architectures"]))
            for i in raw["images"]
        },
        load_balancer_types={
            b["name"]: LoadBalancerType(name=b["name"], prices=dict(b["prices"]))
            for b in raw["load_balancer_types"]
        },
    )


def refreshed_catalog_path(state_dir: Path, provider: str) -> Path:
    return state_dir / "catalogs" / f"{provider}.json"


@cache
def load_catalog(provider: str, state_dir: Path | None = None) -> Catalog:
    """The catalog for `provider`: a refreshed copy in `state_dir` if any, else the shipped one."""
    if state_dir is not None:
        refreshed = _refreshed_catalog(refreshed_catalog_path(state_dir, provider), provider)
        if refreshed is not None:
            return refreshed
    shipped = resources.files("engine.catalog").joinpath(f"{provider}.json")
    return catalog_from_json(json.loads(shipped.read_text(encoding="utf-8")))


def _refreshed_catalog(path: Path, provider: str) -> Catalog | None:
    """The refreshed catalog at `path`, None when there is none, else an EngineError saying
    how it is unusable: whatever is in its place (a folder too) was meant to be used, and is
    never silently passed over for the shipped catalog."""
    try:
        if not path.exists() and not path.is_symlink():
            return None
        if path.is_dir():
            what = "is damaged (a folder, not a file)"
        elif not path.is_file():
            what = "is damaged (not a regular file)"
        else:
            return catalog_from_json(json.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        what = f"cannot be read ({exc.strerror})"
    except (ValueError, KeyError, TypeError) as exc:
        what = f"is damaged ({exc})"
    raise EngineError(
        f"{path}: the refreshed {provider} catalog {what}; delete it or run "
        f"`engine catalog refresh {provider}` again"
    )
