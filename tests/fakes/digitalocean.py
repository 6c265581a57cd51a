"""A stateful fake of the DigitalOcean API (https://docs.digitalocean.com/reference/api/).

Payloads follow the published reference: list endpoints page with `page`/`per_page` (at most
200) and answer `links.pages` and `meta.total`; `GET /v2/droplets` filters by `tag_name` and
`name`; errors are `{"id", "message", "request_id"}`; every request needs
`Authorization: Bearer <token>`. Rate limits, as documented: `rate_limit` requests an hour
(5000; answers carry `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset`, the time
the oldest counted request expires) and `per_minute` a minute (250; no header tells it); past
either, 429 `too_many_requests` with `Retry-After` in seconds. Like the real API, a droplet
created moments ago can be missing from list calls (`add_droplet(..., listed=False)`).
`POST /v2/droplets/{id}/actions` (`type` reboot, power_off, power_on, rebuild, snapshot)
starts an action that `GET /v2/actions/{id}` reports `in-progress`, then `completed` or
`errored` (tests.fakes.common.ActionScript);
`DELETE /v2/droplets/{id}` answers 204. Faults (429, 5xx, slow answers) as in
tests.fakes.common.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.catalog import load_catalog
from tests.fakes.common import ActionScript, FakeAction, FakeApi, Fault, pages

__all__ = ["FakeDigitalOcean", "Fault"]

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
class FakeDigitalOcean(FakeApi):
    # An account of its own per fake: the engine keeps one rate budget per token and endpoint.
    token: str = field(default_factory=lambda: f"dop_v1_fake{secrets.token_hex(8)}")
    regions: list[dict[str, Any]] = field(default_factory=list)
    sizes: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    droplets: list[dict[str, Any]] = field(default_factory=list)
    firewalls: list[dict[str, Any]] = field(default_factory=list)
    vpcs: list[dict[str, Any]] = field(default_factory=list)
    load_balancers: list[dict[str, Any]] = field(default_factory=list)
    ssh_keys: list[dict[str, Any]] = field(default_factory=list)
    # Records of the account's domains, as `GET /v2/domains/{zone}/records` lists them, each
    # with the `zone` it is in (which the API does not show).
    domain_records: list[dict[str, Any]] = field(default_factory=list)
    # The domains and the projects the account holds (the example spec's).
    zones: set[str] = field(default_factory=lambda: {"example.com"})
    projects: list[str] = field(default_factory=lambda: ["first-project", "api"])
    unlisted: set[int] = field(default_factory=set)
    actions: dict[int, FakeAction] = field(default_factory=dict)
    action_script: ActionScript = field(default_factory=ActionScript)
    # (droplet id, request body) of every droplet action asked for.
    action_requests: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    with_total: bool = True
    rate_limit: int = 5000
    per_minute: int = 250
    # When each counted request was made (the last hour's), oldest first.
    counted: deque[float] = field(default_factory=deque)

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
                _distribution(1, "12 x64", "Debian", "debian-12-x64"),
                _distribution(2, "24.04 (LTS) x64", "Ubuntu", "ubuntu-24-04-x64"),
            ]
        if not self.vpcs:
            self.vpcs = [self._vpc(f"default-{region}", region, default=True) for region in REGIONS]

    # --- state the tests arrange -------------------------------------------------------------

    def _vpc(self, name: str, region: str, *, default: bool = False) -> dict[str, Any]:
        vpc_id = f"5a4981aa-9653-4bd1-bef5-{self.next_id():012d}"
        return {
            "id": vpc_id,
            "urn": f"do:vpc:{vpc_id}",
            "name": name,
            "description": "",
            "region": region,
            "ip_range": "10.110.0.0/20",
            "default": default,
            "created_at": "2026-01-01T00:00:00Z",
        }

    def add_vpc(
        self, name: str, region: str, *, ip_range: str = "10.110.0.0/20", description: str = ""
    ) -> dict[str, Any]:
        vpc = self._vpc(name, region)
        vpc.update(ip_range=ip_range, description=description)
        self.vpcs.append(vpc)
        return vpc

    def add_load_balancer(
        self,
        name: str,
        *,
        size: str = "lb-small",
        region: str = "fra1",
        rules: tuple[dict[str, Any], ...] = (),
        droplet_ids: tuple[int, ...] = (),
        health_check: tuple[str, int] = ("tcp", 80),
        vpc_uuid: str | None = None,
    ) -> dict[str, Any]:
        """A load balancer as `GET /v2/load_balancers` lists it; each forwarding rule
        `{entry_protocol, entry_port, target_protocol, target_port, tls_passthrough}`."""
        lb_id = f"4de7ac8b-495b-4884-9a69-{self.next_id():012d}"
        protocol, port = health_check
        balancer = {
            "id": lb_id,
            "name": name,
            "ip": "104.131.186.241",
            "size_unit": 1,
            "size": size,
            "algorithm": "round_robin",
            "status": "active",
            "created_at": "2026-01-01T00:00:00Z",
            "forwarding_rules": [
                {"certificate_id": "", "tls_passthrough": False, **rule} for rule in rules
            ],
            "health_check": {
                "protocol": protocol,
                "port": port,
                "path": "",
                "check_interval_seconds": 10,
                "response_timeout_seconds": 5,
                "healthy_threshold": 5,
                "unhealthy_threshold": 3,
            },
            "sticky_sessions": {"type": "none"},
            "region": {"name": region.upper(), "slug": region, "available": True},
            "tag": "",
            "droplet_ids": list(droplet_ids),
            "redirect_http_to_https": False,
            "enable_proxy_protocol": False,
            "enable_backend_keepalive": False,
            "vpc_uuid": vpc_uuid
            or next(v["id"] for v in self.vpcs if v["default"] and v["region"] == region),
        }
        self.load_balancers.append(balancer)
        return balancer

    def add_domain_record(
        self, zone: str, name: str, *, record_type: str = "A", data: str, ttl: int = 1800
    ) -> dict[str, Any]:
        """A record of a domain the account holds (a domain with records exists)."""
        record = {
            "zone": zone,
            "id": self.next_id(),
            "type": record_type,
            "name": name,
            "data": data,
            "priority": None,
            "port": None,
            "ttl": ttl,
            "weight": None,
            "flags": None,
            "tag": None,
        }
        self.domain_records.append(record)
        return record

    def add_ssh_key(self, name: str, fingerprint: str, public_key: str) -> dict[str, Any]:
        """An SSH key as `GET /v2/account/keys` lists it."""
        key = {
            "id": self.next_id(),
            "fingerprint": fingerprint,
            "public_key": public_key,
            "name": name,
        }
        self.ssh_keys.append(key)
        return key

    def add_firewall(
        self,
        name: str,
        *,
        droplet_ids: tuple[int, ...] = (),
        tags: tuple[str, ...] = (),
        inbound: tuple[tuple[str, str, tuple[str, ...]], ...] = (),
    ) -> dict[str, Any]:
        """A firewall as `GET /v2/firewalls` lists it; inbound rules (protocol, ports,
        source addresses), ports "0" for every port."""
        firewall = {
            "id": f"bb4b2611-3d72-467b-8602-{self.next_id():012d}",
            "status": "succeeded",
            "created_at": "2026-01-01T00:00:00Z",
            "pending_changes": [],
            "name": name,
            "droplet_ids": list(droplet_ids),
            "tags": list(tags),
            "inbound_rules": [
                {"protocol": protocol, "ports": ports, "sources": {"addresses": list(sources)}}
                for protocol, ports, sources in inbound
            ],
            "outbound_rules": [],
        }
        self.firewalls.append(firewall)
        return firewall

    def add_droplet(
        self,
        name: str,
        *,
        tags: tuple[str, ...] = (),
        size: str = "s-1vcpu-1gb",
        region: str = "fra1",
        image: str = "debian-12-x64",
        vpc: str | None = None,
        backups: bool = False,
        ipv6: bool = True,
        status: str = "active",
        listed: bool = True,
        droplet_id: int | None = None,
    ) -> dict[str, Any]:
        """Add a droplet as `GET /v2/droplets/{id}` would show it (its VPC by name)."""
        droplet_id = droplet_id or self.next_id()
        kind = self._size(size)
        vpc_id = next(
            v["id"]
            for v in self.vpcs
            if v["name"] == (vpc or f"default-{region}") and v["region"] == region
        )
        octets = (droplet_id >> 8) & 255, droplet_id & 255
        droplet = {
            "id": droplet_id,
            "name": name,
            "memory": kind["memory"],
            "vcpus": kind["vcpus"],
            "disk": kind["disk"],
            "locked": False,
            "status": status,
            "kernel": None,
            "created_at": "2026-01-01T00:00:00Z",
            "features": ["monitoring", *(["backups"] if backups else []), "ipv6"],
            "backup_ids": [],
            "next_backup_window": (
                {"start": "2026-01-02T00:00:00Z", "end": "2026-01-02T23:00:00Z"}
                if backups
                else None
            ),
            "snapshot_ids": [],
            "image": next(i for i in self.images if i["slug"] == image),
            "volume_ids": [],
            "size": kind,
            "size_slug": size,
            "networks": {
                "v4": [
                    {
                        "ip_address": f"104.236.{octets[0]}.{octets[1]}",
                        "netmask": "255.255.192.0",
                        "gateway": "104.236.0.1",
                        "type": "public",
                    },
                    {
                        "ip_address": f"10.110.{octets[0]}.{octets[1]}",
                        "netmask": "255.255.240.0",
                        "gateway": "10.110.0.1",
                        "type": "private",
                    },
                ],
                "v6": [
                    {
                        "ip_address": f"2604:a880:800:10::{droplet_id:x}",
                        "netmask": 64,
                        "gateway": "2604:a880:800:10::1",
                        "type": "public",
                    }
                ]
                if ipv6
                else [],
            },
            "region": {
                "name": region.upper(),
                "slug": region,
                "features": ["backups", "ipv6", "metadata"],
                "available": True,
                "sizes": [size],
            },
            "tags": list(tags),
            "vpc_uuid": vpc_id,
        }
        self.droplets.append(droplet)
        if not listed:
            self.unlisted.add(droplet_id)
        return droplet

    def _size(self, slug: str) -> dict[str, Any]:
        """The size from this fake's catalog, else from the engine's shipped one."""
        known = next((s for s in self.sizes if s["slug"] == slug), None)
        if known is not None:
            return known
        t = load_catalog("digitalocean").server_types[slug]
        price = min(t.prices.values(), default=0.0)
        return _size(slug, t.cores, int(t.memory_gb * 1024), t.disk_gb, price)

    # --- the HTTP side ---------------------------------------------------------------------

    def error(self, status: int, code: str, message: str) -> JSONResponse:
        request_id = f"req-{len(self.requests)}"
        return JSONResponse(
            {"id": code, "message": message, "request_id": request_id},
            status_code=status,
            headers={"x-request-id": request_id},
        )

    def _expire(self, now: float) -> None:
        while self.counted and self.counted[0] <= now - 3600:
            self.counted.popleft()

    def rate_headers(self) -> dict[str, str]:
        now = time.time()
        self._expire(now)
        oldest = self.counted[0] if self.counted else now
        return {
            "ratelimit-limit": str(self.rate_limit),
            "ratelimit-remaining": str(max(0, self.rate_limit - len(self.counted))),
            "ratelimit-reset": str(int(oldest + 3600)),
        }

    def spend(self) -> JSONResponse | None:
        now = time.time()
        self._expire(now)
        last_minute = [t for t in self.counted if t > now - 60]
        if len(self.counted) >= self.rate_limit:
            return self.refused(int(self.counted[0] + 3600 - now) + 1)
        if len(last_minute) >= self.per_minute:
            return self.refused(int(last_minute[-self.per_minute] + 60 - now) + 1)
        self.counted.append(now)
        return None

    def refused(self, retry_after: int | None) -> JSONResponse:
        response = self.error(429, "too_many_requests", "API Rate limit exceeded.")
        response.headers.update(self.rate_headers())
        response.headers["Retry-After"] = str(retry_after if retry_after is not None else 1)
        return response

    async def _list(self, request: Request, key: str, items: list[dict[str, Any]]) -> JSONResponse:
        refused = await self.admit(request)
        if refused is not None:
            return refused
        query = request.query_params
        if key == "droplets":
            items = [d for d in items if d["id"] not in self.unlisted]
            if "tag_name" in query:
                items = [d for d in items if query["tag_name"] in d["tags"]]
            if "name" in query:
                items = [d for d in items if d["name"] == query["name"]]
        chunk, page, _, last = pages(items, request, MAX_PER_PAGE, 20)
        base = str(request.url.remove_query_params(["page"]))
        joiner = "&" if "?" in base else "?"
        links: dict[str, str] = {}
        if page < last:
            links["next"] = f"{base}{joiner}page={page + 1}"
            links["last"] = f"{base}{joiner}page={last}"
        meta = {"total": len(items)} if self.with_total else {}
        return JSONResponse(
            {key: chunk, "links": {"pages": links}, "meta": meta}, headers=self.rate_headers()
        )

    # --- droplet actions -----------------------------------------------------------------

    def _droplet(self, droplet_id: int) -> dict[str, Any] | None:
        return next((d for d in self.droplets if d["id"] == droplet_id), None)

    async def _droplet_action(self, request: Request) -> JSONResponse:
        """POST /v2/droplets/{id}/actions: 201 with the action, `in-progress`."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        droplet = self._droplet(int(request.path_params["id"]))
        if droplet is None:
            return self.error(404, "not_found", "The resource you requested could not be found.")
        body = await request.json()
        self.action_requests.append((droplet["id"], body))
        kind = body.get("type")
        effects = {
            "reboot": lambda: None,
            "power_off": lambda: droplet.update(status="off"),
            "power_on": lambda: droplet.update(status="active"),
            "rebuild": lambda: droplet.update(status="active"),
            "snapshot": lambda: droplet["snapshot_ids"].append(self.next_id()),
        }
        if kind not in effects:
            return self.error(422, "unprocessable_entity", f"unknown action type {kind!r}")
        payload = {
            "id": self.next_id(),
            "status": "in-progress",
            "type": kind,
            "started_at": "2026-01-01T00:00:00Z",
            "completed_at": None,
            "resource_id": droplet["id"],
            "resource_type": "droplet",
            "region": droplet["region"],
            "region_slug": droplet["region"]["slug"],
        }
        self.actions[int(payload["id"])] = FakeAction(payload, self.action_script, effects[kind])
        return JSONResponse({"action": payload}, status_code=201, headers=self.rate_headers())

    async def _get_action(self, request: Request) -> JSONResponse:
        """GET /v2/actions/{id}: each read moves an action in progress on to its end."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        action = self.actions.get(int(request.path_params["id"]))
        if action is None:
            return self.error(404, "not_found", "The resource you requested could not be found.")
        payload = action.payload
        if payload["status"] == "in-progress" and action.read():
            ok = action.script.ends == "success"
            payload.update(status="completed" if ok else "errored",
                           completed_at="2026-01-01T00:01:00Z")  # fmt: skip
            if ok:
                action.effect()
        return JSONResponse({"action": payload}, headers=self.rate_headers())

    async def _delete_droplet(self, request: Request) -> Response:
        """DELETE /v2/droplets/{id}: 204, the droplet gone."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        droplet = self._droplet(int(request.path_params["id"]))
        if droplet is None:
            return self.error(404, "not_found", "The resource you requested could not be found.")
        self.droplets.remove(droplet)
        return Response(status_code=204, headers=self.rate_headers())

    def app(self) -> Starlette:
        def lister(key: str):  # type: ignore[no-untyped-def]
            async def endpoint(request: Request) -> JSONResponse:
                return await self._list(request, key, getattr(self, key))

            return endpoint

        async def records(request: Request) -> JSONResponse:
            zone = request.path_params["zone"]
            if zone not in self.zones:
                return self.error(
                    404, "not_found", "The resource you requested could not be found."
                )
            held = [r for r in self.domain_records if r["zone"] == zone]
            shown = [{k: v for k, v in r.items() if k != "zone"} for r in held]
            return await self._list(request, "domain_records", shown)

        async def keys_of_account(request: Request) -> JSONResponse:
            return await self._list(request, "ssh_keys", self.ssh_keys)

        async def domains(request: Request) -> JSONResponse:
            held = [{"name": zone, "ttl": 1800, "zone_file": ""} for zone in sorted(self.zones)]
            return await self._list(request, "domains", held)

        async def projects(request: Request) -> JSONResponse:
            held = [
                {
                    "id": f"4e1bfbc3-dc3e-41f2-a18f-{n:012d}",
                    "owner_uuid": "99525febec065ca37b2ffe4f852fd2b2581895e7",
                    "owner_id": 258992,
                    "name": name,
                    "description": "",
                    "purpose": "Web Application",
                    "environment": "Production",
                    "created_at": "2026-01-01T00:00:00Z",
                    "updated_at": "2026-01-01T00:00:00Z",
                    "is_default": n == 0,
                }
                for n, name in enumerate(self.projects)
            ]
            return await self._list(request, "projects", held)

        keys = ("regions", "sizes", "images", "droplets", "firewalls", "vpcs", "load_balancers")
        return Starlette(
            routes=[
                *(Route(f"/v2/{key}", lister(key)) for key in keys),
                Route("/v2/domains/{zone}/records", records),
                Route("/v2/account/keys", keys_of_account),
                Route("/v2/domains", domains),
                Route("/v2/projects", projects),
                Route("/v2/droplets/{id:int}/actions", self._droplet_action, methods=["POST"]),
                Route("/v2/droplets/{id:int}", self._delete_droplet, methods=["DELETE"]),
                Route("/v2/actions/{id:int}", self._get_action),
            ]
        )


def _distribution(image_id: int, name: str, distribution: str, slug: str) -> dict[str, Any]:
    return {
        "id": image_id,
        "name": name,
        "distribution": distribution,
        "slug": slug,
        "public": True,
        "regions": list(REGIONS),
        "created_at": "2026-01-01T00:00:00Z",
        "min_disk_size": 10,
        "type": "base",
        "size_gigabytes": 2.36,
        "description": f"{distribution} {name}",
        "tags": [],
        "status": "available",
        "error_message": "",
    }
