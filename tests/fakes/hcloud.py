"""A stateful fake of the Hetzner Cloud API (https://docs.hetzner.cloud), for tests.

Payloads follow the published reference: list endpoints page with `page`/`per_page` (at most
50) and answer `meta.pagination`; `GET /servers` filters by `label_selector` (the documented
selector language: `k=v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, comma = and) and
`name`; `POST /servers` creates one (409 `uniqueness_error` for a name in use);
`POST /servers/{id}/actions/{reboot,poweroff,poweron,rebuild,create_image}` and
`DELETE /servers/{id}` start an action that `GET /actions/{id}` reports running (with its
progress), then success or error (tests.fakes.common.ActionScript); `GET /images` filters by
`type` and `label_selector` too, and `DELETE /images/{id}` deletes a snapshot; errors are
`{"error": {"code", "message", "details"}}` with an `X-Correlation-Id` header; every request
needs `Authorization: Bearer <token>`.

Rate limit, as documented: a bucket of `rate_limit` requests (3600) per project that refills
one request a second; every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and
`RateLimit-Reset` (the UNIX time the bucket is full again); an empty bucket answers 429
`rate_limit_exceeded`, with those headers and no Retry-After. `meta.pagination.last_page` and
`total_entries` "may be null" (`unknown_totals`): `next_page` is how to go on then. The fake
counts requests and fails the next ones on demand (429, 5xx, slow answers that time out) to
exercise retries.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.catalog import load_catalog
from tests.fakes.common import ActionScript, FakeAction, FakeApi, Fault, pages

__all__ = ["FakeHcloud", "Fault"]

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


def _image(i: int, name: str | None, arch: str) -> dict[str, Any]:
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
        "os_flavor": (name or "debian").split("-")[0],
        "os_version": (name or "12").split("-")[-1],
        "rapid_deploy": True,
        "protection": {"delete": False},
        "deprecated": None,
        "deleted": None,
        "labels": {},
        "architecture": arch,
    }


def _selector_term(term: str) -> Any:
    term = term.strip()
    if match := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\((.*)\)", term):
        key, op, values = match[1], match[2], {v.strip() for v in match[3].split(",")}
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if "!=" in term:
        key, value = term.split("!=", 1)
        return lambda labels: labels.get(key) != value
    if "=" in term:
        key, value = term.replace("==", "=").split("=", 1)
        return lambda labels: labels.get(key) == value
    if term.startswith("!"):
        return lambda labels: term[1:] not in labels
    return lambda labels: term in labels


def matches_selector(labels: dict[str, str], selector: str) -> bool:
    """Whether `labels` satisfy a Hetzner label selector."""
    terms = re.split(r",(?![^()]*\))", selector)
    return all(_selector_term(term)(labels) for term in terms if term.strip())


@dataclass
class FakeHcloud(FakeApi):
    # A project of its own per fake: the engine keeps one rate budget per token and endpoint.
    token: str = field(default_factory=lambda: f"fake-hcloud-token-{secrets.token_hex(8)}")
    locations: list[dict[str, Any]] = field(default_factory=list)
    server_types: list[dict[str, Any]] = field(default_factory=list)
    images: list[dict[str, Any]] = field(default_factory=list)
    load_balancer_types: list[dict[str, Any]] = field(default_factory=list)
    servers: list[dict[str, Any]] = field(default_factory=list)
    firewalls: list[dict[str, Any]] = field(default_factory=list)
    networks: list[dict[str, Any]] = field(default_factory=list)
    placement_groups: list[dict[str, Any]] = field(default_factory=list)
    load_balancers: list[dict[str, Any]] = field(default_factory=list)
    ssh_keys: list[dict[str, Any]] = field(default_factory=list)
    actions: dict[int, FakeAction] = field(default_factory=dict)
    action_script: ActionScript = field(default_factory=ActionScript)
    # (server id, command, request body) of every server action asked for.
    action_requests: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    # The user_data a rebuild was given, by server id (the API never shows it back).
    user_data: dict[int, str] = field(default_factory=dict)
    rate_limit: int = 3600
    rate_remaining: float = 3600.0
    rate_at: float = field(default_factory=time.time)
    unknown_totals: bool = False
    _filtered: dict[tuple[Any, ...], list[dict[str, Any]]] = field(default_factory=dict)

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
                },
                {
                    "id": 2,
                    "name": "lb21",
                    "description": "LB21",
                    "max_connections": 20000,
                    "max_services": 15,
                    "max_targets": 75,
                    "max_assigned_certificates": 25,
                    "deprecated": None,
                    "prices": [_price(loc["name"], 16.40) for loc in self.locations],
                },
            ]

    # --- state the tests arrange -------------------------------------------------------------

    def add_firewall(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        rules: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A firewall as `GET /firewalls` lists it; each rule `{direction, protocol, port,
        source_ips, destination_ips, description}` (port null for icmp)."""
        firewall = {
            "id": self.next_id(),
            "name": name,
            "labels": labels or {},
            "created": "2026-01-01T00:00:00+00:00",
            "rules": [
                {
                    "direction": "in",
                    "port": None,
                    "source_ips": [],
                    "destination_ips": [],
                    "description": None,
                    **rule,
                }
                for rule in rules or ()
            ],
            "applied_to": [],
        }
        self.firewalls.append(firewall)
        return firewall

    def add_network(
        self,
        name: str,
        ip_range: str = "10.0.0.0/16",
        *,
        labels: dict[str, str] | None = None,
        subnets: tuple[tuple[str, str], ...] = (),
    ) -> dict[str, Any]:
        """A network as `GET /networks` lists it, with a cloud subnet per (zone, range)."""
        network = {
            "id": self.next_id(),
            "name": name,
            "ip_range": ip_range,
            "subnets": [
                {
                    "type": "cloud",
                    "ip_range": subnet,
                    "network_zone": zone,
                    "gateway": str(next(iter(ipaddress.ip_network(subnet).hosts()))),
                    "vswitch_id": None,
                }
                for zone, subnet in subnets
            ],
            "routes": [],
            "servers": [],
            "load_balancers": [],
            "protection": {"delete": False},
            "labels": labels or {},
            "created": "2026-01-01T00:00:00+00:00",
            "expose_routes_to_vswitch": False,
        }
        self.networks.append(network)
        return network

    def add_placement_group(self, name: str, labels: dict[str, str] | None = None) -> None:
        """A spread placement group (servers join it in add_server)."""
        self._placement_group(name, None)
        self._named(self.placement_groups, name)["labels"] = dict(labels or {})

    def add_load_balancer(
        self,
        name: str,
        *,
        lb_type: str = "lb11",
        location: str = "fsn1",
        labels: dict[str, str] | None = None,
        services: tuple[tuple[str, int, int], ...] = (),
        targets: tuple[int, ...] = (),
        private: bool = False,
    ) -> dict[str, Any]:
        """A load balancer as `GET /load_balancers` lists it: services (protocol, listen,
        destination) get Hetzner's default health check (the service's protocol on its
        destination port, every 15 s, 10 s timeout, 3 retries); targets are server ids."""
        lb_id = self.next_id()
        kind = next(t for t in self.load_balancer_types if t["name"] == lb_type)
        balancer = {
            "id": lb_id,
            "name": name,
            "public_net": {
                "enabled": True,
                "ipv4": {"ip": f"198.18.{lb_id >> 8 & 255}.{lb_id & 255}", "dns_ptr": None},
                "ipv6": {"ip": f"2001:db8:1b::{lb_id:x}", "dns_ptr": None},
            },
            "private_net": [],
            "location": self._location(location),
            "load_balancer_type": {k: v for k, v in kind.items() if k != "prices"},
            "protection": {"delete": False},
            "labels": dict(labels or {}),
            "created": "2026-01-01T00:00:00+00:00",
            "services": [
                {
                    "protocol": protocol,
                    "listen_port": listen,
                    "destination_port": destination,
                    "proxyprotocol": False,
                    "health_check": {
                        "protocol": protocol,
                        "port": destination,
                        "interval": 15,
                        "timeout": 10,
                        "retries": 3,
                        "http": None,
                    },
                    "http": None,
                }
                for protocol, listen, destination in services
            ],
            "targets": [
                {
                    "type": "server",
                    "server": {"id": server_id},
                    "health_status": [],
                    "use_private_ip": private,
                }
                for server_id in targets
            ],
            "algorithm": {"type": "round_robin"},
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 0,
        }
        self.load_balancers.append(balancer)
        return balancer

    def add_ssh_key(
        self, name: str, fingerprint: str, public_key: str, labels: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """An SSH key as `GET /ssh_keys` lists it."""
        key = {
            "id": self.next_id(),
            "name": name,
            "fingerprint": fingerprint,
            "public_key": public_key,
            "labels": dict(labels or {}),
            "created": "2026-01-01T00:00:00+00:00",
        }
        self.ssh_keys.append(key)
        return key

    def _named(self, items: list[dict[str, Any]], name: str) -> dict[str, Any]:
        return next(item for item in items if item["name"] == name)

    def add_server(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        server_type: str = "cx22",
        location: str = "fsn1",
        image: str | None = "debian-12",
        snapshot_labels: dict[str, str] | None = None,
        firewalls: tuple[str, ...] = (),
        networks: tuple[str, ...] = (),
        placement_group: str | None = None,
        backups: bool = False,
        ipv4: bool = True,
        ipv6: bool = True,
        status: str = "running",
        server_id: int | None = None,
    ) -> dict[str, Any]:
        """Add a server as `GET /servers/{id}` would show it (firewalls and networks by name)."""
        server_id = server_id or self.next_id()
        kind = self._server_type(server_type)
        octets = (server_id >> 8) & 255, server_id & 255
        server = {
            "id": server_id,
            "name": name,
            "status": status,
            "created": "2026-01-01T00:00:00+00:00",
            "public_net": {
                "ipv4": {
                    "id": server_id,
                    "ip": f"203.0.{octets[0]}.{octets[1]}",
                    "blocked": False,
                    "dns_ptr": f"static.{server_id}.example.com",
                }
                if ipv4
                else None,
                "ipv6": {
                    "id": server_id,
                    "ip": f"2001:db8:{server_id:x}::/64",
                    "blocked": False,
                    "dns_ptr": [],
                }
                if ipv6
                else None,
                "floating_ips": [],
                "firewalls": [
                    {"id": self._named(self.firewalls, f)["id"], "status": "applied"}
                    for f in firewalls
                ],
            },
            "private_net": [
                {
                    "network": self._attach(n, server_id),
                    "ip": f"10.0.{octets[0]}.{octets[1]}",
                    "alias_ips": [],
                    "mac_address": "86:00:ff:2a:7d:e1",
                }
                for n in networks
            ],
            "server_type": kind,
            "location": self._location(location),
            "image": self._server_image(image, snapshot_labels),
            "iso": None,
            "rescue_enabled": False,
            "locked": False,
            "backup_window": "22-02" if backups else None,
            "outgoing_traffic": 0,
            "ingoing_traffic": 0,
            "included_traffic": 21990232555520,
            "protection": {"delete": False, "rebuild": False},
            "labels": dict(labels or {}),
            "volumes": [],
            "load_balancers": [],
            "primary_disk_size": kind["disk"],
            "placement_group": self._placement_group(placement_group, server_id),
        }
        self.servers.append(server)
        return server

    def _location(self, name: str) -> dict[str, Any]:
        """The location from this fake's catalog, else from the engine's shipped one."""
        known = next((x for x in self.locations if x["name"] == name), None)
        if known is not None:
            return known
        x = load_catalog("hcloud").locations[name]
        return _location(self.next_id(), name, x.city, x.country, x.network_zone)

    def _server_type(self, name: str) -> dict[str, Any]:
        """The type from this fake's catalog, else from the engine's shipped one."""
        known = next((t for t in self.server_types if t["name"] == name), None)
        if known is not None:
            return known
        t = load_catalog("hcloud").server_types[name]
        return _server_type(
            self.next_id(), name, t.cores, t.memory_gb, t.disk_gb, t.architecture, dict(t.prices)
        )

    def _server_image(
        self, name: str | None, snapshot_labels: dict[str, str] | None
    ) -> dict[str, Any] | None:
        if snapshot_labels is not None:
            snapshot = _image(self.next_id(), None, "x86")
            snapshot.update(type="snapshot", description="golden", labels=snapshot_labels)
            return snapshot
        if name is None:
            return None  # the image was deleted since
        return next(i for i in self.images if i["name"] == name)

    def _attach(self, network: str, server_id: int) -> int:
        """The network's id, the server listed among its servers (as the API shows it)."""
        found = self._named(self.networks, network)
        found["servers"].append(server_id)
        return int(found["id"])

    def _placement_group(self, name: str | None, server_id: int | None) -> dict[str, Any] | None:
        if name is None:
            return None
        group = next((g for g in self.placement_groups if g["name"] == name), None)
        if group is None:
            group = {
                "id": self.next_id(),
                "name": name,
                "labels": {},
                "type": "spread",
                "created": "2026-01-01T00:00:00+00:00",
                "servers": [],
            }
            self.placement_groups.append(group)
        if server_id is not None:
            group["servers"].append(server_id)
        return group

    # --- the HTTP side ---------------------------------------------------------------------

    def error(self, status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"code": code, "message": message, "details": {}}},
            status_code=status,
            headers={"X-Correlation-Id": f"corr-{len(self.requests)}"},
        )

    def _refill(self) -> None:
        now = time.time()
        per_s = self.rate_limit / 3600
        self.rate_remaining = min(
            self.rate_limit, self.rate_remaining + (now - self.rate_at) * per_s
        )
        self.rate_at = now

    def rate_headers(self) -> dict[str, str]:
        self._refill()
        full_in = (self.rate_limit - self.rate_remaining) * 3600 / self.rate_limit
        return {
            "RateLimit-Limit": str(self.rate_limit),
            "RateLimit-Remaining": str(int(self.rate_remaining)),
            "RateLimit-Reset": str(int(self.rate_at + full_in)),
        }

    def spend(self) -> JSONResponse | None:
        self._refill()
        if self.rate_remaining < 1:
            return self.refused(None)
        self.rate_remaining -= 1
        return None

    def refused(self, retry_after: int | None) -> JSONResponse:
        response = self.error(429, "rate_limit_exceeded", "limit of 3600 requests per hour reached")
        response.headers.update(self.rate_headers())
        return response

    async def _list(self, request: Request, key: str, items: list[dict[str, Any]]) -> JSONResponse:
        refused = await self.admit(request)
        if refused is not None:
            return refused
        query = request.query_params
        filters = (key, len(items), tuple(query.getlist("type")), query.get("name"))
        filters += (query.get("label_selector"),)
        if filters not in self._filtered:  # a page of 10,000 servers need not filter all again
            self._filtered.clear()
            if "type" in query:
                items = [i for i in items if i.get("type") in query.getlist("type")]
            if "name" in query:
                items = [i for i in items if i.get("name") == query["name"]]
            if "label_selector" in query:
                selector = query["label_selector"]
                items = [i for i in items if matches_selector(i["labels"], selector)]
            self._filtered[filters] = items
        items = self._filtered[filters]
        chunk, page, per_page, last = pages(items, request, MAX_PER_PAGE, 25)
        return JSONResponse(
            {
                key: chunk,
                "meta": {
                    "pagination": {
                        "page": page,
                        "per_page": per_page,
                        "previous_page": page - 1 if page > 1 else None,
                        "next_page": page + 1 if page < last else None,
                        "last_page": None if self.unknown_totals else last,
                        "total_entries": None if self.unknown_totals else len(items),
                    }
                },
            },
            headers=self.rate_headers(),
        )

    async def _create_server(self, request: Request) -> JSONResponse:
        """POST /servers ("Create a Server"): name, server_type, image, location, labels."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        body = await request.json()
        if not body.get("name") or not body.get("server_type") or not body.get("image"):
            return self.error(422, "invalid_input", "name, server_type and image are required")
        if any(s["name"] == body["name"] for s in self.servers):
            return self.error(409, "uniqueness_error", "server name is already used")
        server = self.add_server(
            body["name"],
            labels=body.get("labels"),
            server_type=body["server_type"],
            location=body.get("location") or "fsn1",
            image=body["image"],
            status="initializing",
        )
        action = {
            "id": self.next_id(),
            "command": "create_server",
            "status": "running",
            "progress": 0,
            "started": "2026-01-01T00:00:00+00:00",
            "finished": None,
            "resources": [{"id": server["id"], "type": "server"}],
            "error": None,
        }
        return JSONResponse(
            {"server": server, "action": action, "next_actions": [], "root_password": None},
            status_code=201,
            headers=self.rate_headers(),
        )

    # --- server actions ------------------------------------------------------------------

    def _action(self, command: str, server_id: int, effect: Any) -> dict[str, Any]:
        """A new running action on a server (as `GET /actions/{id}` shows it)."""
        payload: dict[str, Any] = {
            "id": self.next_id(),
            "command": command,
            "status": "running",
            "progress": 0,
            "started": "2026-01-01T00:00:00+00:00",
            "finished": None,
            "resources": [{"id": server_id, "type": "server"}],
            "error": None,
        }
        self.actions[payload["id"]] = FakeAction(payload, self.action_script, effect)
        return payload

    def _server(self, server_id: int) -> dict[str, Any] | None:
        return next((s for s in self.servers if s["id"] == server_id), None)

    async def _server_action(self, request: Request) -> JSONResponse:
        """POST /servers/{id}/actions/{action}: reboot, poweroff, poweron, rebuild,
        create_image (each answered 201 with the running action)."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        server_id, verb = int(request.path_params["id"]), request.path_params["action"]
        server = self._server(server_id)
        if server is None:
            return self.error(404, "not_found", f"server with ID '{server_id}' not found")
        body = await request.json() if await request.body() else {}
        self.action_requests.append((server_id, verb, body))
        answer: dict[str, Any] = {}

        def status(value: str) -> Any:
            return lambda: server.update(status=value)

        if verb == "reboot":
            action = self._action("reboot_server", server_id, lambda: None)
        elif verb == "poweroff":
            action = self._action("stop_server", server_id, status("off"))
        elif verb == "poweron":
            action = self._action("start_server", server_id, status("running"))
        elif verb == "rebuild":
            image = next((i for i in self.images if i["name"] == body.get("image")), None)
            if image is None:
                return self.error(422, "invalid_input", f"image {body.get('image')!r} not found")
            if "user_data" in body:
                self.user_data[server_id] = body["user_data"]
            action = self._action(
                "rebuild_server", server_id, lambda: server.update(image=image, status="running")
            )
            answer["root_password"] = None
        elif verb == "create_image":
            snapshot = _image(self.next_id(), None, server["image"]["architecture"])
            snapshot.update(
                type="snapshot",
                status="creating",
                description=body.get("description"),
                labels=body.get("labels") or {},
                created_from={"id": server_id, "name": server["name"]},
            )
            self.images.append(snapshot)
            action = self._action(
                "create_image", server_id, lambda: snapshot.update(status="available")
            )
            answer["image"] = snapshot
        else:
            return self.error(404, "not_found", f"no action {verb}")
        return JSONResponse(
            {"action": action, **answer}, status_code=201, headers=self.rate_headers()
        )

    async def _delete_server(self, request: Request) -> JSONResponse:
        """DELETE /servers/{id}: answered with the running delete_server action."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        server = self._server(int(request.path_params["id"]))
        if server is None:
            return self.error(404, "not_found", "server not found")
        self.action_requests.append((server["id"], "delete", {}))
        action = self._action("delete_server", server["id"], lambda: self.servers.remove(server))
        return JSONResponse({"action": action}, headers=self.rate_headers())

    async def _delete_image(self, request: Request) -> Response:
        """DELETE /images/{id} ("Delete an Image"): a snapshot or backup goes, answered 204
        with no body; a system image cannot be deleted."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        image = next((i for i in self.images if i["id"] == request.path_params["id"]), None)
        if image is None:
            return self.error(404, "not_found", "image not found")
        if image["type"] not in ("snapshot", "backup"):
            return self.error(422, "invalid_input", "only snapshots and backups can be deleted")
        self.images.remove(image)
        return Response(status_code=204, headers=self.rate_headers())

    async def _get_action(self, request: Request) -> JSONResponse:
        """GET /actions/{id}: each read moves a running action on (progress, then its end)."""
        refused = await self.admit(request)
        if refused is not None:
            return refused
        action = self.actions.get(int(request.path_params["id"]))
        if action is None:
            return self.error(404, "not_found", "action not found")
        payload = action.payload
        if payload["status"] == "running":
            if action.read():
                ok = action.script.ends == "success"
                payload.update(
                    status="success" if ok else "error",
                    progress=100,
                    finished="2026-01-01T00:01:00+00:00",
                    error=None if ok else {"code": "action_failed", "message": action.script.error},
                )
                if ok:
                    action.effect()
            else:
                payload["progress"] = min(90, int(payload["progress"]) + 30)
        return JSONResponse({"action": payload}, headers=self.rate_headers())

    def app(self) -> Starlette:
        def lister(key: str):  # type: ignore[no-untyped-def]
            async def endpoint(request: Request) -> JSONResponse:
                if request.method == "POST":
                    return await self._create_server(request)
                return await self._list(request, key, getattr(self, key))

            return endpoint

        keys = (
            "locations",
            "server_types",
            "images",
            "load_balancer_types",
            "servers",
            "firewalls",
            "networks",
            "placement_groups",
            "load_balancers",
            "ssh_keys",
        )
        return Starlette(
            routes=[
                *(
                    Route(
                        f"/v1/{key}",
                        lister(key),
                        methods=["GET", "POST"] if key == "servers" else None,
                    )
                    for key in keys
                ),
                Route(
                    "/v1/servers/{id:int}/actions/{action}", self._server_action, methods=["POST"]
                ),
                Route("/v1/servers/{id:int}", self._delete_server, methods=["DELETE"]),
                Route("/v1/images/{id:int}", self._delete_image, methods=["DELETE"]),
                Route("/v1/actions/{id:int}", self._get_action),
            ]
        )
