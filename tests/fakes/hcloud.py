"""A stateful fake of the Hetzner Cloud API (https://docs.hetzner.cloud), for tests.

Payloads follow the published reference: list endpoints page with `page`/`per_page` (at most
50) and answer `meta.pagination`; errors are `{"error": {"code", "message"}}`; every request
needs `Authorization: Bearer <token>`. The fake counts requests and can be told to fail the
next ones (429 with rate-limit headers, 5xx) to exercise retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_PER_PAGE = 50


def _price(location: str, monthly: float) -> dict[str, Any]:
    hourly = round(monthly / 730, 4)
    return {
        "location": location,
        "price_hourly": {"net": f"{hourly:.4f}", "gross": f"{hourly * 1.19:.4f}"},
        "price_monthly": {"net": f"{monthly:.4f}", "gross": f"{monthly * 1.19:.4f}"},
        "included_traffic": 21990232555520,
        "price_per_tb_traffic": {"net": "1.0000", "gross": "1.1900"},
    }


def _location(i: int, name: str, city: str, country: str, zone: str) -> dict[str, Any]:
    return {
        "id": i,
        "name": name,
        "description": f"{city} DC",
        "country": country,
        "city": city,
        "latitude": 50.0,
        "longitude": 12.0,
        "network_zone": zone,
    }


def _server_type(
    i: int,
    name: str,
    cores: int,
    memory: float,
    disk: int,
    arch: str,
    prices: dict[str, float],
    deprecated: bool = False,
) -> dict[str, Any]:
    return {
        "id": i,
        "name": name,
        "description": name.upper(),
        "category": "shared_vcpu",
        "cores": cores,
        "memory": memory,
        "disk": disk,
        "deprecated": deprecated,
        "deprecation": None,
        "prices": [_price(loc, p) for loc, p in prices.items()],
        "storage_type": "local",
        "cpu_type": "shared",
        "architecture": arch,
        "locations": [
            {"id": n, "name": loc, "deprecation": None, "available": True, "recommended": True}
            for n, loc in enumerate(prices)
        ],
    }


def _image(i: int, name: str, arch: str) -> dict[str, Any]:
    return {
        "id": i,
        "type": "system",
        "status": "available",
        "name": name,
        "description": name,
        "image_size": None,
        "disk_size": 5,
        "created": "2024-01-01T00:00:00+00:00",
        "created_from": None,
        "bound_to": None,
        "os_flavor": name.split("-")[0],
        "os_version": name.split("-")[-1],
        "rapid_deploy": True,
        "protection": {"delete": False},
        "deprecated": None,
        "deleted": None,
        "labels": {},
        "architecture": arch,
    }


@dataclass
class Fault:
    status: int
    retry_after: int | None = None


@dataclass
class FakeHcloud:
    token: str = "fake-hcloud-token-0123456789"
    requests: list[tuple[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    locations: list[dict[str, Any]] = field(default_factory=list)
    server_types: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    load_balancer_types: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.locations:
            self.locations = [
                _location(1, "fsn1", "Falkenstein", "DE", "eu-central"),
                _location(2, "nbg1", "Nuremberg", "DE", "eu-central"),
                _location(3, "hel1", "Helsinki", "FI", "eu-central"),
                _location(4, "ash", "Ashburn, VA", "US", "us-east"),
            ]
        if not self.server_types:
            eu = ("fsn1", "nbg1", "hel1")
            self.server_types = [
                _server_type(22, "cx22", 2, 4.0, 40, "x86", dict.fromkeys(eu, 3.79)),
                _server_type(23, "cx23", 2, 4.0, 40, "x86", dict.fromkeys(eu, 3.49)),
                _server_type(45, "cax11", 2, 4.0, 40, "arm", dict.fromkeys(eu, 3.79)),
                _server_type(
                    9, "cpx11", 2, 2.0, 40, "x86", {**dict.fromkeys(eu, 4.35), "ash": 5.49}
                ),
                _server_type(1, "cx11", 1, 2.0, 20, "x86", {"fsn1": 3.29}, deprecated=True),
            ]
            # Enough types to need more than one page at 50 per page.
            self.server_types += [
                _server_type(1000 + n, f"zz{n}", 1, 1.0, 10, "x86", {"fsn1": 1.0})
                for n in range(60)
            ]
        if not self.images:
            self.images = [
                _image(1, "debian-12", "x86"),
                _image(2, "debian-12", "arm"),
                _image(3, "ubuntu-24.04", "x86"),
            ]
        if not self.load_balancer_types:
            self.load_balancer_types = [
                {
                    "id": 1,
                    "name": "lb11",
                    "description": "LB11",
                    "max_connections": 10000,
                    "max_services": 5,
                    "max_targets": 25,
                    "max_assigned_certificates": 10,
                    "deprecated": None,
                    "prices": [_price(loc["name"], 5.39) for loc in self.locations],
                }
            ]

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    def _guard(self, request: Request) -> JSONResponse | None:
        self.requests.append((request.method, request.url.path))
        if request.headers.get("authorization") != f"Bearer {self.token}":
            return JSONResponse(
                {"error": {"code": "unauthorized", "message": "unable to authenticate"}},
                status_code=401,
            )
        if self.faults:
            fault = self.faults.pop(0)
            headers = {"RateLimit-Limit": "3600", "RateLimit-Remaining": "0"}
            if fault.retry_after is not None:
                headers["RateLimit-Reset"] = str(fault.retry_after)
                headers["Retry-After"] = str(fault.retry_after)
            code = "rate_limit_exceeded" if fault.status == 429 else "service_error"
            return JSONResponse(
                {"error": {"code": code, "message": "injected fault"}},
                status_code=fault.status,
                headers=headers,
            )
        return None

    def _list(self, request: Request, key: str, items: list[dict[str, Any]]) -> JSONResponse:
        refused = self._guard(request)
        if refused is not None:
            return refused
        per_page = min(int(request.query_params.get("per_page", 25)), MAX_PER_PAGE)
        page = int(request.query_params.get("page", 1))
        if "type" in request.query_params:
            wanted = request.query_params.getlist("type")
            items = [i for i in items if i.get("type") in wanted]
        last = max(1, -(-len(items) // per_page))
        chunk = items[(page - 1) * per_page : page * per_page]
        return JSONResponse(
            {
                key: chunk,
                "meta": {
                    "pagination": {
                        "page": page,
                        "per_page": per_page,
                        "previous_page": page - 1 if page > 1 else None,
                        "next_page": page + 1 if page < last else None,
                        "last_page": last,
                        "total_entries": len(items),
                    }
                },
            },
            headers={"RateLimit-Limit": "3600", "RateLimit-Remaining": "3599"},
        )

    def app(self) -> Starlette:
        def lister(key: str):  # type: ignore[no-untyped-def]
            async def endpoint(request: Request) -> JSONResponse:
                return self._list(request, key, getattr(self, key))

            return endpoint

        return Starlette(
            routes=[
                Route(f"/v1/{key}", lister(key))
                for key in ("locations", "server_types", "images", "load_balancer_types")
            ]
        )
