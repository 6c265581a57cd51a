"""Hetzner Cloud inventory: the fleet's servers, read with paged list calls.

Owned servers come from `GET /servers?label_selector=fleet=<name>,managed-by=fleet-engine`,
50 per page (the API's maximum): 1,000 servers cost 20 requests. Firewall and network names
cost one paged list each, and only when a listed server is attached to any; they are read
back through engine.providers.naming (the engine's own firewalls left out).

Name collisions: server names are unique in a Hetzner project, so an unowned server called
`web-4` blocks creating ours. Such servers cannot be found by label, so `read_unowned` reads
the first unfiltered page (50 servers and the project's page count); if that does not settle
every name, it asks by name (`?name=`) when that takes fewer requests than reading the
remaining pages, and reads the remaining pages otherwise. It costs nothing when nothing is
to be created, and at most min(1 + names, project pages) requests.

Resources besides servers (`read_resources`) are read with one paged, label-filtered list
each: firewalls, networks (with their subnets), load balancers (type, location, algorithm,
services with their health checks, targets), placement groups; SSH keys are listed whole,
since a key someone else uploaded is reused by fingerprint (and reported as not owned). A
load balancer's own firewall is left out (stacks.declared says why).

Every request goes through the client of engine.providers.hcloud.client (retried and paced by
engine.providers.retry).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from engine.model import (
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Fleet,
    Image,
    ImageKind,
    ProviderName,
)
from engine.plan import Problem
from engine.providers import (
    ActualServer,
    CloudResource,
    InventoryPage,
    ResourceKind,
    engine_name,
    without_fleet_id,
)
from engine.providers.hcloud.client import get_bytes, hcloud_client, provider_errors
from engine.providers.naming import engine_resource_name, spec_resources
from engine.providers.retry import ApiCalls, Paging, RetryPolicy, read_pages

if TYPE_CHECKING:
    from hcloud import Client

T = TypeVar("T")

PAGE_SIZE = 50


class _Address(msgspec.Struct):
    ip: str | None = None


class _Ref(msgspec.Struct):
    id: int


class _PublicNet(msgspec.Struct):
    ipv4: _Address | None = None
    ipv6: _Address | None = None
    firewalls: list[_Ref] | None = None


class _PrivateNet(msgspec.Struct):
    network: int
    ip: str


class _Named(msgspec.Struct):
    name: str = ""


class _ServerType(msgspec.Struct):
    name: str = ""
    disk: int = 0


class _Image(msgspec.Struct):
    id: int
    type: str | None = None
    name: str | None = None
    labels: dict[str, str] | None = None


class _Server(msgspec.Struct):
    """The fields of a server in Hetzner's documented JSON that the engine reads; others are
    skipped unread."""

    id: int
    name: str
    status: str = ""
    created: dt.datetime | None = None
    labels: dict[str, str] | None = None
    public_net: _PublicNet | None = None
    private_net: list[_PrivateNet] | None = None
    server_type: _ServerType | None = None
    image: _Image | None = None
    location: _Named | None = None
    primary_disk_size: int | None = None
    backup_window: str | None = None
    placement_group: _Named | None = None


class _Pagination(msgspec.Struct):
    last_page: int | None = None
    next_page: int | None = None


class _Meta(msgspec.Struct):
    pagination: _Pagination | None = None


class _ServerPage(msgspec.Struct):
    servers: list[_Server] | None = None
    meta: _Meta | None = None


_SERVER_PAGE = msgspec.json.Decoder(_ServerPage)


def _image(raw: _Image | None) -> Image | None:
    if raw is None:
        return None
    labels = tuple(sorted((raw.labels or {}).items()))
    if raw.type in ("system", "app"):
        return Image(kind=ImageKind.NAME, name=raw.name or str(raw.id), labels=labels)
    return Image(kind=ImageKind.SNAPSHOT, name=str(raw.id), labels=labels)


class _Listed:
    """A server as listed, its firewalls and networks still ids (names come later)."""

    __slots__ = ("fields", "firewall_ids", "network_ids")

    def __init__(self, raw: _Server) -> None:
        public = raw.public_net
        self.firewall_ids = tuple(f.id for f in (public and public.firewalls) or ())
        self.network_ids = tuple(n.network for n in raw.private_net or ())
        self.fields = _fields(raw)


def _fields(raw: _Server) -> dict[str, Any]:
    """An ActualServer's fields from the server's JSON, but its firewalls and networks."""
    labels, fleet_id = without_fleet_id(tuple(sorted((raw.labels or {}).items())))
    public = raw.public_net or _PublicNet()
    kind = raw.server_type or _ServerType()
    return {
        "name": engine_name(labels, raw.name),
        "provider_id": str(raw.id),
        "labels": labels,
        "server_type": kind.name,
        "image": _image(raw.image),
        "location": raw.location.name if raw.location else "",
        "status": raw.status,
        "ipv4": public.ipv4.ip if public.ipv4 else None,
        "ipv6": public.ipv6.ip if public.ipv6 else None,
        "private_ips": tuple(n.ip for n in raw.private_net or ()),
        "disk_gb": raw.primary_disk_size or kind.disk,
        "backups": raw.backup_window is not None,
        "placement_group": raw.placement_group.name if raw.placement_group else None,
        "created": raw.created,
        "fleet_id": fleet_id,
    }


def _actual(raw: _Server) -> ActualServer:
    return ActualServer(**_fields(raw))


class HcloudReader:
    """Reads one fleet's servers from one Hetzner Cloud project.

    Servers are read as the documented JSON, not as the SDK's domain objects (0.2 ms per
    server to build, 2 s for 10,000), and decoded straight into the fields the engine reads
    (`_Server`): 10,000 servers are 33 MB of JSON, and decoding all of it into dicts cost
    0.2 s more. Other lists are few and small, and come through the SDK's `Client.request`.
    """

    provider = ProviderName.HCLOUD
    list_lag_s = 0.0

    def __init__(self, fleet: Fleet, client: Client, calls: ApiCalls, workers: int) -> None:
        self.fleet = fleet
        self.client = client
        self.calls = calls
        self.workers = workers
        # Whole lists read for names (firewalls, networks): read_resources filters them
        # by label here instead of asking again.
        self._whole: dict[str, list[dict[str, Any]]] = {}

    @property
    def _selector(self) -> str:
        return f"{LABEL_FLEET}={self.fleet.name},{LABEL_MANAGED_BY}={MANAGED_BY}"

    def read_page(self, page: int) -> InventoryPage:
        with provider_errors(self.fleet.provider.token_env):
            servers, paging = self._servers(page, _actual, label_selector=self._selector)
        return InventoryPage(servers=tuple(servers), next_page=paging.next)

    def read_servers(self) -> tuple[ActualServer, ...]:
        with provider_errors(self.fleet.provider.token_env):
            listed = read_pages(
                lambda page: self._servers(page, _Listed, label_selector=self._selector),
                workers=self.workers,
            )
            firewalls = self._names("firewalls") if any(s.firewall_ids for s in listed) else {}
            networks = self._names("networks") if any(s.network_ids for s in listed) else {}
        fleet = self.fleet.name
        # Servers share a few sets of firewalls and networks: each set is named once.
        named: dict[tuple[str, tuple[int, ...]], tuple[str, ...]] = {}

        def names(kind: str, ids: tuple[int, ...], table: dict[int, str]) -> tuple[str, ...]:
            found = named.get((kind, ids))
            if found is None:
                found = named[kind, ids] = spec_resources(
                    fleet, [table.get(i, str(i)) for i in ids]
                )
            return found

        return tuple(
            ActualServer(
                **s.fields,
                firewalls=names("firewalls", s.firewall_ids, firewalls),
                networks=names("networks", s.network_ids, networks),
            )
            for s in listed
        )

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        wanted = set(names)
        if not wanted:
            return ()
        with provider_errors(self.fleet.provider.token_env):
            first, paging = self._servers(1, _actual)
            found = [s for s in first if s.name in wanted]
            missing = wanted - {s.name for s in first}
            # Without a page count (`last_page` may be null), asking by name is the sure way.
            last = paging.last if paging.last is not None else len(missing) + 2
            if paging.next is not None and missing:
                if len(missing) < last - 1:
                    asks = [functools.partial(self._servers, 1, _actual, name=name)
                            for name in sorted(missing)]  # fmt: skip
                else:
                    asks = [functools.partial(self._servers, page, _actual)
                            for page in range(2, last + 1)]  # fmt: skip
                with ThreadPoolExecutor(max_workers=self.workers) as pool:
                    for servers, _ in pool.map(lambda ask: ask(), asks):
                        found += servers
        return tuple(s for s in found if s.name in wanted and not self._is_owned(s))

    def read_prerequisites(self) -> tuple[Problem, ...]:
        """None: a Hetzner fleet's project is its token's, and it declares no DNS."""
        return ()

    def read_resources(self, servers: Sequence[ActualServer]) -> tuple[CloudResource, ...]:
        """The fleet's firewalls, networks, load balancers, placement groups and SSH keys."""
        from stacks.declared import (
            key_name_of,
            names_text,
            rule_line,
            rules_text,
            service_line,
        )

        names = {int(s.provider_id): s.name for s in servers}
        lb_firewalls = engine_resource_name(self.fleet.name, "lb-")
        kinds = ("firewalls", "networks", "load_balancers", "placement_groups", "ssh_keys")

        def read(kind: str) -> list[dict[str, Any]]:
            if kind == "ssh_keys":
                return self._all(kind)
            if kind in self._whole:
                return [item for item in self._whole[kind] if self._owns(item)]
            return self._all(kind, label_selector=self._selector)

        # The lists at once: one round trip of waiting instead of five.
        with (
            provider_errors(self.fleet.provider.token_env),
            ThreadPoolExecutor(max_workers=min(self.workers, len(kinds))) as pool,
        ):
            listed = dict(zip(kinds, pool.map(read, kinds), strict=True))
        keys = listed["ssh_keys"]
        found: list[CloudResource] = []
        for fw in listed["firewalls"]:
            if fw["name"].startswith(lb_firewalls):
                continue
            rules = (
                rule_line(r["protocol"], r.get("port"), r.get("source_ips") or (),
                          r.get("description") or "")
                for r in fw.get("rules") or () if r.get("direction") == "in"
            )  # fmt: skip
            found.append(_resource(ResourceKind.FIREWALL, fw, (("rules", rules_text(rules)),)))
        for net in listed["networks"]:
            subnets = "\n".join(
                sorted(
                    f"{sub['network_zone']} {sub['ip_range']}" for sub in net.get("subnets") or ()
                )
            )
            found.append(
                _resource(
                    ResourceKind.NETWORK,
                    net,
                    (("ip_range", net["ip_range"]), ("subnets", subnets)),
                    servers=[names.get(i, str(i)) for i in net.get("servers") or ()],
                )
            )
        for lb in listed["load_balancers"]:
            services = sorted(lb.get("services") or (), key=lambda s: s["listen_port"])
            targets = [
                names.get(t["server"]["id"], str(t["server"]["id"]))
                for t in lb.get("targets") or () if t.get("type") == "server"
            ]  # fmt: skip
            checks = (s.get("health_check") or {} for s in services)
            found.append(
                _resource(
                    ResourceKind.LOAD_BALANCER,
                    lb,
                    (
                        ("type", (lb.get("load_balancer_type") or {}).get("name", "")),
                        ("location", (lb.get("location") or {}).get("name", "")),
                        ("algorithm", (lb.get("algorithm") or {}).get("type", "")),
                        (
                            "services",
                            "\n".join(
                                service_line(s["protocol"], s["listen_port"], s["destination_port"])
                                for s in services
                            ),
                        ),
                        ("targets", names_text(targets)),
                        (
                            "health_checks",
                            "\n".join(
                                f"{c.get('protocol', '')} {c.get('port', '')}" for c in checks
                            ),
                        ),
                    ),
                )
            )
        for group in listed["placement_groups"]:
            found.append(
                _resource(
                    ResourceKind.PLACEMENT_GROUP,
                    group,
                    (("type", group.get("type", "")),),
                    servers=[names.get(i, str(i)) for i in group.get("servers") or ()],
                )
            )
        for key in keys:
            mine = (key.get("labels") or {}).get(LABEL_FLEET) == self.fleet.name
            found.append(
                CloudResource(
                    kind=ResourceKind.SSH_KEY,
                    name=key["name"] if mine else key_name_of(self.fleet.name, key["fingerprint"]),
                    properties=(("fingerprint", key["fingerprint"]),),
                    provider_id=str(key["id"]),
                    owned=mine,
                )
            )
        return tuple(found)

    def _all(self, kind: str, **query: str) -> list[dict[str, Any]]:
        """Every item of a paged list, as the API's JSON."""
        return read_pages(lambda page: self._page(kind, page, **query), workers=self.workers)

    def _page(self, kind: str, page: int, **query: str) -> tuple[list[dict[str, Any]], Paging]:
        body = self.client.request(
            "GET", f"/{kind}", params={"page": page, "per_page": PAGE_SIZE, **query}
        )
        # `last_page` (and `total_entries`) may be null, as documented: `next_page` is not.
        pagination = (body.get("meta") or {}).get("pagination") or {}
        paging = Paging(last=pagination.get("last_page"), next=pagination.get("next_page"))
        return body.get(kind, []), paging

    def _servers(
        self, page: int, build: Callable[[_Server], T], **query: str
    ) -> tuple[list[T], Paging]:
        """One page of `GET /servers`, decoded straight into the fields the engine reads: a
        page of 50 servers is about 170 KB of JSON, and decoding all of it into dicts cost
        more CPU than the request."""
        body = _SERVER_PAGE.decode(
            get_bytes(self.client, "/servers", {"page": page, "per_page": PAGE_SIZE, **query})
        )
        pagination = (body.meta and body.meta.pagination) or _Pagination()
        paging = Paging(last=pagination.last_page, next=pagination.next_page)
        return [build(server) for server in body.servers or ()], paging

    def _names(self, kind: str) -> dict[int, str]:
        self._whole[kind] = self._all(kind)
        return {item["id"]: item["name"] for item in self._whole[kind]}

    def _owns(self, item: dict[str, Any]) -> bool:
        labels = item.get("labels") or {}
        return (
            labels.get(LABEL_FLEET) == self.fleet.name
            and labels.get(LABEL_MANAGED_BY) == MANAGED_BY
        )

    def _is_owned(self, server: ActualServer) -> bool:
        return self._owns({"labels": dict(server.labels)})


def _resource(
    kind: ResourceKind,
    raw: dict[str, Any],
    properties: tuple[tuple[str, str], ...],
    servers: Sequence[str] = (),
) -> CloudResource:
    return CloudResource(
        kind=kind,
        name=raw["name"],
        properties=properties,
        servers=tuple(servers),
        provider_id=str(raw["id"]),
    )


def open_reader(fleet: Fleet, token: str, policy: RetryPolicy) -> HcloudReader:
    """The hcloud reader for `fleet` (endpoint from the spec's provider.endpoint, if set)."""
    calls = ApiCalls()
    client = hcloud_client(token, fleet.provider.endpoint, policy, calls)
    return HcloudReader(fleet, client, calls, policy.workers)
