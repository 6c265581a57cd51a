"""A stateful fake of the DigitalOcean API (https://docs.digitalocean.com/reference/api/).

Payloads follow the published reference: list endpoints page with `page`/`per_page` (at most
200) and answer `links.pages` and `meta.total`; errors are `{"id", "message", "request_id"}`;
every request needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_PER_PAGE = 200
REGIONS = ("nyc3", "ams3", "fra1", "sgp1")


def _size(slug: str, vcpus: int, memory_mb: int, disk: int, monthly: float) -> dict[str, Any]:
    return {
        "slug": slug,
        "memory": memory_mb,
        "vcpus": vcpus,
        "disk": disk,
        "transfer": 1.0,
        "price_monthly": monthly,
        "price_hourly": round(monthly / 672, 5),
        "regions": list(REGIONS),
        "available": True,
        "description": "Basic",
    }


@dataclass
class FakeDigitalOcean:
    token: str = "dop_v1_fake0123456789abcdef"
    requests: list[tuple[str, str]] = field(default_factory=list)
    regions: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.regions:
            self.regions = [
                {
                    "slug": slug,
                    "name": slug.upper(),
                    "sizes": ["s-1vcpu-1gb"],
                    "available": True,
                    "features": ["backups", "ipv6", "metadata"],
                }
                for slug in REGIONS
            ]
        if not self.sizes:
            self.sizes = [
                _size("s-1vcpu-1gb", 1, 1024, 25, 6.0),
                _size("s-2vcpu-4gb", 2, 4096, 80, 24.0),
            ] + [_size(f"zz-{n}", 1, 512, 10, 1.0) for n in range(250)]
        if not self.images:
            self.images = [
                {
                    "id": 1,
                    "name": "12 x64",
                    "distribution": "Debian",
                    "slug": "debian-12-x64",
                    "public": True,
                    "regions": list(REGIONS),
                    "type": "base",
                    "status": "available",
                },
                {
                    "id": 2,
                    "name": "24.04 (LTS) x64",
                    "distribution": "Ubuntu",
                    "slug": "ubuntu-24-04-x64",
                    "public": True,
                    "regions": list(REGIONS),
                    "type": "base",
                    "status": "available",
                },
            ]

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    def _list(self, request: Request, key: str, items: list[dict[str, Any]]) -> JSONResponse:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse(
                {
                    "id": "Unauthorized",
                    "message": "Unable to authenticate you.",
                    "request_id": "r1",
                },
                status_code=401,
            )
        per_page = min(int(request.query_params.get("per_page", 20)), MAX_PER_PAGE)
        page = int(request.query_params.get("page", 1))
        last = max(1, -(-len(items) // per_page))
        base = str(request.url.remove_query_params(["page"]))
        pages: dict[str, str] = {}
        if page < last:
            pages["next"] = f"{base}&page={page + 1}" if "?" in base else f"{base}?page={page + 1}"
            pages["last"] = f"{base}&page={last}" if "?" in base else f"{base}?page={last}"
        return JSONResponse(
            {
                key: items[(page - 1) * per_page : page * per_page],
                "links": {"pages": pages},
                "meta": {"total": len(items)},
            }
        )

    def app(self) -> Starlette:
        def lister(key: str):  # type: ignore[no-untyped-def]
            async def endpoint(request: Request) -> JSONResponse:
                return self._list(request, key, getattr(self, key))

            return endpoint

        return Starlette(
            routes=[Route(f"/v2/{key}", lister(key)) for key in ("regions", "sizes", "images")]
        )
