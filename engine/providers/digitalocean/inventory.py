"""DigitalOcean inventory: the fleet's droplets, read with paged list calls.

Owned droplets come from `GET /v2/droplets?tag_name=fleet:<name>`, 200 per page (the API's
maximum): 1,000 droplets cost 5 requests. Droplets without the `managed-by:fleet-engine` tag
are left out (the API filters by one tag only). Labels are tags `key:value` (the engine's
`fleet-member:` tag aside). Firewall membership (`GET /v2/firewalls`) and VPC names
(`GET /v2/vpcs`) cost one paged list each, and only when the spec declares firewalls or
networks; they are read back through engine.providers.naming (a VPC per region and a firewall
per group stand for one spec network or firewall; the engine's own firewalls are left out).
Every droplet sits in its region's default VPC unless told otherwise, and default VPCs are not
reported as networks.

Droplet names are not unique on DigitalOcean and ownership is by tags, so a droplet of
someone else called `web-4` does not block ours: `read_unowned` has nothing to find.

Resources besides droplets (`read_resources`): firewalls are the fleet's when they select
its droplets by its tags (`fleet:<name>`, or a group's member tag), the engine's load
balancer firewalls aside; VPCs when their description names the fleet; load balancers by
name; DNS records of the spec's zones when they point at one of the fleet's droplets; SSH
keys by name (`<fleet>-key-...`), and a key the account holds under another name is reported
as not owned (the program reuses it by fingerprint). One paged list each (records: one per
zone).

List lag: a droplet created moments ago can be missing from list calls for a few seconds.
`list_lag_s` tells the diff how long to trust the state store's record of a fresh create
instead of planning it again.

Every request goes through the client of engine.providers.digitalocean.client (retried and
paced by engine.providers.retry).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import msgspec

from engine.model import (
    LABEL_FLEET,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    Fleet,
    Image,
    ImageKind,
    Labels,
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
from engine.providers.digitalocean.client import (
    PAGE_SIZE,
    DigitalOceanApi,
    paging,
    provider_errors,
)
from engine.providers.digitalocean.naming import MEMBER_TAG, is_member_tag
from engine.providers.naming import engine_resource_name, spec_resource, spec_resources
from engine.providers.retry import ApiCalls, Paging, RetryPolicy, read_pages

LIST_LAG_S = 60.0


def tags_to_labels(tags: list[str]) -> Labels:
    """Tags `key:value` as labels; a tag without a colon is a label with an empty value.
    The tag the engine's firewalls select a group by is not a label."""
    pairs = (tag.partition(":") for tag in tags if not is_member_tag(tag))
    return tuple(sorted([(key, value) for key, _, value in pairs]))


class _Address(msgspec.Struct):
    ip_address: str
    type: str = ""


class _Networks(msgspec.Struct):
    v4: list[_Address] | None = None
    v6: list[_Address] | None = None


class _Slugged(msgspec.Struct):
    slug: str = ""


class _Image(msgspec.Struct):
    id: int | None = None
    type: str | None = None
    name: str | None = None
    slug: str | None = None
    tags: list[str] | None = None


class _Droplet(msgspec.Struct):
    """The fields of a droplet in DigitalOcean's documented JSON that the engine reads;
    others are skipped unread."""

    id: int
    name: str
    status: str = ""
    created_at: dt.datetime | None = None
    tags: list[str] | None = None
    size_slug: str | None = None
    size: _Slugged | None = None
    image: _Image | None = None
    region: _Slugged | None = None
    networks: _Networks | None = None
    disk: int | None = None
    features: list[str] | None = None
    next_backup_window: dict[str, Any] | None = None
    vpc_uuid: str | None = None


class _Pages(msgspec.Struct):
    next: str | None = None


class _Links(msgspec.Struct):
    pages: _Pages | None = None


class _Meta(msgspec.Struct):
    total: int | None = None


class _DropletPage(msgspec.Struct):
    droplets: list[_Droplet] | None = None
    links: _Links | None = None
    meta: _Meta | None = None


_DROPLET_PAGE = msgspec.json.Decoder(_DropletPage)


def _image(raw: _Image | None) -> Image | None:
    if raw is None or (raw.id is None and raw.slug is None and raw.name is None):
        return None
    if raw.type == "custom":
        return Image(kind=ImageKind.CUSTOM, name=str(raw.name or raw.id))
    if raw.type in ("snapshot", "backup"):
        labels = tags_to_labels(raw.tags or [])
        return Image(kind=ImageKind.SNAPSHOT, name=str(raw.id), labels=labels)
    return Image(kind=ImageKind.NAME, name=str(raw.slug or raw.id))


def _addresses(listed: list[_Address] | None, kind: str) -> list[str]:
    return [n.ip_address for n in listed or () if n.type == kind]


class DigitalOceanReader:
    """Reads one fleet's droplets from one DigitalOcean account."""

    provider = ProviderName.DIGITALOCEAN
    list_lag_s = LIST_LAG_S

    def __init__(self, fleet: Fleet, api: DigitalOceanApi, calls: ApiCalls) -> None:
        self.fleet = fleet
        self.api = api
        self.calls = calls
        # Lists read_servers read already (firewalls, VPCs): read_resources reuses them.
        self._whole: dict[str, list[dict[str, Any]]] = {}

    def _list(self, call: Any, key: str) -> list[dict[str, Any]]:
        """Every item of a whole list (read once per reader)."""
        if key not in self._whole:
            self._whole[key] = self.api.list_all(call, key)
        return self._whole[key]

    def read_servers(self) -> tuple[ActualServer, ...]:
        client = self.api.client
        managed = f"{LABEL_MANAGED_BY}:{MANAGED_BY}"
        with provider_errors(self.fleet.provider.token_env):
            droplets = [
                d
                for d in read_pages(self._droplets, workers=self.api.workers)
                if managed in (d.tags or ())
            ]
            firewalls = (
                self._list(client.firewalls.list, "firewalls")
                if self.fleet.firewalls and droplets
                else []
            )
            vpcs = (
                {
                    v["id"]: v["name"]
                    for v in self._list(client.vpcs.list, "vpcs")
                    if not v.get("default")
                }
                if self.fleet.networks and droplets
                else {}
            )
        membership = _Membership(self.fleet.name, firewalls, vpcs)
        return tuple(self._actual(d, membership) for d in droplets)

    def read_unowned(self, names: Collection[str]) -> tuple[ActualServer, ...]:
        return ()

    def read_prerequisites(self) -> tuple[Problem, ...]:
        """The spec's project and the domains of its DNS records, which the program assigns
        droplets to and writes records in but never makes: one list call each."""
        client, found = self.api.client, []
        project = self.fleet.provider.project
        with provider_errors(self.fleet.provider.token_env):
            if project:
                names = {p["name"] for p in self.api.list_all(client.projects.list, "projects")}
                if project not in names:
                    found.append(
                        Problem(
                            code="missing_at_provider",
                            path="provider.project",
                            message=f"DigitalOcean has no project named {project} in this account",
                            hint="create it in the control panel (Projects, New Project), or "
                            f"name one of: {', '.join(sorted(names)) or '(none)'}",
                        )
                    )
            zones = sorted({record.zone for record in self.fleet.dns})
            if zones:
                held = {d["name"] for d in self._list(client.domains.list, "domains")}
                found += [
                    Problem(
                        code="missing_at_provider",
                        path=f"dns[{i}].zone",
                        message=f"DigitalOcean holds no domain {record.zone} in this account, "
                        "so its records cannot be written",
                        hint=f"add the domain (Networking, Domains) and point {record.zone}'s "
                        "name servers at ns1.digitalocean.com, or use a zone it holds",
                    )
                    for i, record in enumerate(self.fleet.dns)
                    if record.zone not in held
                ]
        return tuple(found)

    def read_resources(self, servers: Sequence[ActualServer]) -> tuple[CloudResource, ...]:
        """The fleet's firewalls, VPCs, load balancers, DNS records and SSH keys."""
        client, fleet = self.api.client, self.fleet.name
        with provider_errors(self.fleet.provider.token_env):
            firewalls = self._list(client.firewalls.list, "firewalls")
            vpcs = self._list(client.vpcs.list, "vpcs")
            balancers = self.api.list_all(client.load_balancers.list, "load_balancers")
            keys = self.api.list_all(client.ssh_keys.list, "ssh_keys")
            zones = sorted({r.zone for r in self.fleet.dns})
            held = (
                {d["name"] for d in self._list(client.domains.list, "domains")} if zones else set()
            )
            # A domain the account lacks has no records: read_prerequisites says so.
            records = {
                zone: self.api.list_all(client.domains.list_records, "domain_records",
                                        domain_name=zone)
                for zone in zones if zone in held
            }  # fmt: skip
        names = {s.provider_id: s.name for s in servers}
        marks = (f"{LABEL_FLEET}:{fleet}", f"{MEMBER_TAG}:{fleet}:")
        found = [
            _firewall(fw)
            for fw in firewalls
            if any(tag == marks[0] or tag.startswith(marks[1]) for tag in fw.get("tags") or ())
            and not fw["name"].startswith(engine_resource_name(fleet, "lb-"))
        ]
        for vpc in vpcs:
            if vpc.get("default") or not (vpc.get("description") or "").endswith(
                f"of fleet {fleet}"
            ):
                continue
            network, region = spec_resource(fleet, vpc["name"]), vpc.get("region", "")
            found.append(
                CloudResource(
                    kind=ResourceKind.NETWORK,
                    name=vpc["name"],
                    properties=(("ip_range", vpc.get("ip_range", "")), ("region", region)),
                    servers=tuple(
                        s.name for s in servers if network in s.networks and s.location == region
                    ),
                    provider_id=str(vpc["id"]),
                )
            )
        found += [
            _balancer(lb, names)
            for lb in balancers
            if spec_resource(fleet, lb["name"]) == lb["name"] and lb["name"].startswith(f"{fleet}-")
        ]
        by_address = {address: s.name for s in servers for address in (s.ipv4, s.ipv6) if address}
        for zone, listed in records.items():
            found += [
                CloudResource(
                    kind=ResourceKind.DNS_RECORD,
                    name=f"{r['type']} {r['name']}.{zone}",
                    properties=(
                        ("ttl", str(r.get("ttl", ""))),
                        ("points_to", by_address[r["data"]]),
                    ),
                    servers=(by_address[r["data"]],),
                    provider_id=str(r["id"]),
                )
                for r in listed
                if r.get("type") in ("A", "AAAA") and r.get("data") in by_address
            ]
        found += [_key(fleet, key) for key in keys]
        return tuple(found)

    def read_page(self, page: int) -> InventoryPage:
        managed = f"{LABEL_MANAGED_BY}:{MANAGED_BY}"
        with provider_errors(self.fleet.provider.token_env):
            listed, paged = self._droplets(page)
        droplets = [d for d in listed if managed in (d.tags or ())]
        membership = _Membership(self.fleet.name, [], {})
        return InventoryPage(
            servers=tuple(self._actual(d, membership) for d in droplets), next_page=paged.next
        )

    def _droplets(self, page: int) -> tuple[list[_Droplet], Paging]:
        """One page of the fleet's droplets, decoded straight into the fields the engine
        reads: a page of 200 droplets is about 1 MB of JSON, and decoding all of it into
        dicts cost more CPU than the request."""
        body = _DROPLET_PAGE.decode(
            self.api.get_bytes(
                "/v2/droplets",
                per_page=PAGE_SIZE,
                page=page,
                tag_name=f"{LABEL_FLEET}:{self.fleet.name}",
            )
        )
        pages = body.links.pages if body.links else None
        total = body.meta.total if body.meta else None
        return body.droplets or [], paging(page, total, bool(pages and pages.next))

    def _actual(self, droplet: _Droplet, membership: _Membership) -> ActualServer:
        tags = droplet.tags or []
        labels, fleet_id = without_fleet_id(tags_to_labels(tags))
        networks = droplet.networks or _Networks()
        ipv4 = _addresses(networks.v4, "public")
        ipv6 = _addresses(networks.v6, "public")
        return ActualServer(
            name=engine_name(labels, droplet.name),
            provider_id=str(droplet.id),
            labels=labels,
            server_type=droplet.size_slug or (droplet.size.slug if droplet.size else ""),
            image=_image(droplet.image),
            location=droplet.region.slug if droplet.region else "",
            status=droplet.status,
            ipv4=ipv4[0] if ipv4 else None,
            ipv6=ipv6[0] if ipv6 else None,
            private_ips=tuple(_addresses(networks.v4, "private")),
            disk_gb=droplet.disk or 0,
            backups="backups" in (droplet.features or ()) or droplet.next_backup_window is not None,
            firewalls=membership.firewalls(droplet.id, tags),
            networks=membership.network(droplet.vpc_uuid or ""),
            created=droplet.created_at,
            fleet_id=fleet_id,
        )


class _Membership:
    """Which of the account's firewalls and VPCs a droplet is in, as the diff names them.

    Firewalls pick droplets by id or by tag; thousands of droplets share a few tags, so the
    firewalls are indexed once and each set of them named once, as each VPC is.
    """

    def __init__(
        self, fleet: str, firewalls: list[dict[str, Any]], vpcs: Mapping[str, str]
    ) -> None:
        self._fleet = fleet
        self._vpcs = vpcs
        self._by_id: dict[Any, list[int]] = {}
        self._by_tag: dict[str, list[int]] = {}
        self._names = [f["name"] for f in firewalls]
        for n, firewall in enumerate(firewalls):
            for droplet_id in firewall.get("droplet_ids") or ():
                self._by_id.setdefault(droplet_id, []).append(n)
            for tag in firewall.get("tags") or ():
                self._by_tag.setdefault(tag, []).append(n)
        self._named: dict[frozenset[int], tuple[str, ...]] = {}
        self._networks: dict[str, tuple[str, ...]] = {}

    def firewalls(self, droplet_id: Any, tags: Collection[str]) -> tuple[str, ...]:
        chosen = frozenset(
            (*self._by_id.get(droplet_id, ()), *(n for t in tags for n in self._by_tag.get(t, ())))
        )
        names = self._named.get(chosen)
        if names is None:
            names = self._named[chosen] = spec_resources(
                self._fleet, [self._names[n] for n in sorted(chosen)]
            )
        return names

    def network(self, vpc_uuid: str) -> tuple[str, ...]:
        names = self._networks.get(vpc_uuid)
        if names is None:
            vpc = self._vpcs.get(vpc_uuid)
            names = self._networks[vpc_uuid] = spec_resources(self._fleet, [vpc]) if vpc else ()
        return names


def _port(rule: dict[str, Any]) -> str | None:
    """A rule's ports as the spec writes them: "0" and "all" mean every port (None)."""
    ports = str(rule.get("ports") or "")
    return None if ports in ("", "0", "all") else ports


def _firewall(raw: dict[str, Any]) -> CloudResource:
    from stacks.declared import rule_line, rules_text

    rules = (
        rule_line(r["protocol"], _port(r), (r.get("sources") or {}).get("addresses") or ())
        for r in raw.get("inbound_rules") or ()
    )
    return CloudResource(
        kind=ResourceKind.FIREWALL,
        name=raw["name"],
        properties=(
            ("rules", rules_text(rules)),
            ("tags", ", ".join(sorted(raw.get("tags") or ()))),
        ),
        provider_id=str(raw["id"]),
    )


def _balancer(raw: dict[str, Any], names: dict[str, str]) -> CloudResource:
    from stacks.declared import names_text, service_line

    rules = sorted(raw.get("forwarding_rules") or (), key=lambda r: r["entry_port"])
    check = raw.get("health_check") or {}
    targets = [names.get(str(i), str(i)) for i in raw.get("droplet_ids") or ()]
    return CloudResource(
        kind=ResourceKind.LOAD_BALANCER,
        name=raw["name"],
        properties=(
            ("type", raw.get("size", "")),
            ("location", (raw.get("region") or {}).get("slug", "")),
            ("algorithm", raw.get("algorithm", "")),
            (
                "services",
                "\n".join(
                    service_line(
                        r["entry_protocol"],
                        r["entry_port"],
                        r["target_port"],
                        bool(r.get("tls_passthrough")),
                    )
                    for r in rules
                ),
            ),
            ("targets", names_text(targets)),
            ("health_checks", f"{check.get('protocol', '')} {check.get('port', '')}"),
        ),
        servers=tuple(targets),
        provider_id=str(raw["id"]),
    )


def _key(fleet: str, raw: dict[str, Any]) -> CloudResource:
    from stacks.declared import key_name_of

    mine = str(raw.get("name", "")).startswith(f"{fleet}-key-")
    return CloudResource(
        kind=ResourceKind.SSH_KEY,
        name=raw["name"] if mine else key_name_of(fleet, raw["fingerprint"]),
        properties=(("fingerprint", raw["fingerprint"]),),
        provider_id=str(raw["id"]),
        owned=mine,
    )


def open_reader(fleet: Fleet, token: str, policy: RetryPolicy) -> DigitalOceanReader:
    """The DigitalOcean reader for `fleet` (endpoint from provider.endpoint, if set)."""
    calls = ApiCalls()
    return DigitalOceanReader(
        fleet, DigitalOceanApi(token, fleet.provider.endpoint, policy, calls), calls
    )
