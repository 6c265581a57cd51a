"""What a fleet's program declares besides servers, as its provider lists it back. Pure.

The diff compares resources other than servers (firewalls, networks, load balancers, DNS
records, placement groups, SSH keys) in one shape, engine.providers.CloudResource: this
module gives the declared side, each reader's `read_resources` the listed side, in the same
words. Names, rules and address plans come from the same functions the programs
(stacks/hcloud.py, stacks/digitalocean.py) declare with, and the constants they share live
here, so what is compared is what would be made. No Pulumi: `engine preview` (with or
without `--against-ref`) imports this module without loading any SDK.

What each resource says, on both clouds:

    firewall         rules (one line per rule: protocol, port, sources, description)
                     DigitalOcean: also the tags it selects droplets by
    network          Hetzner: ip_range and one subnet per network zone in use;
                     DigitalOcean: one VPC per network and region, its ip_range and region
    load_balancer    type, location, algorithm, services, targets, health checks
    dns_record       ttl and the server it points at (DigitalOcean domains)
    placement_group  type (Hetzner)
    ssh_key          fingerprint

The engine's own firewall (SSH and the agent port from the engine's addresses) is declared
too, so a new `--engine-address` shows; while those addresses are not known (no run recorded
them yet) its rules are left out, and so not compared. A load balancer's own firewall is
not declared: its sources are the balancer's addresses, known once it exists; it goes with
its balancer (`logical`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from engine.catalog import Catalog
from engine.model import (
    FirewallRule,
    Fleet,
    LbProtocol,
    LoadBalancer,
    ProviderName,
    Server,
    fleet_resource_name,
)
from engine.providers import CloudResource, ResourceKind
from engine.providers.digitalocean.naming import member_tag
from engine.providers.naming import ENGINE_FIREWALL, engine_resource_name, qualified_name
from stacks.common import (
    carve,
    engine_rules,
    lb_location,
    servers_by_group,
    ssh_fingerprint,
    ssh_key_name,
    unique_keys,
)

# Hetzner's network zones in a fixed order: a network's range is cut in four, one part per
# zone, so that a zone joining later never moves a subnet that servers sit in.
NETWORK_ZONES = ("eu-central", "us-east", "us-west", "ap-southeast")
DEFAULT_LB_TYPE = "lb11"
# https passes TLS through to the servers (tcp): the spec carries no certificate to end it with.
HCLOUD_LB_PROTOCOLS = {LbProtocol.TCP: "tcp", LbProtocol.HTTP: "http", LbProtocol.HTTPS: "tcp"}
# DigitalOcean's regions in a fixed order: a network's range is cut in 16, one part per region
# (at most a /16, DigitalOcean's largest VPC), so a region joining later never moves a VPC.
REGIONS = (
    "nyc1", "nyc2", "nyc3", "sfo1", "sfo2", "sfo3", "tor1", "atl1",
    "ams2", "ams3", "lon1", "fra1", "sgp1", "blr1", "syd1", "ric1",
)  # fmt: skip
DEFAULT_LB_SIZE = "lb-small"
DO_LB_PROTOCOLS = {LbProtocol.TCP: "tcp", LbProtocol.HTTP: "http", LbProtocol.HTTPS: "https"}
# Neither program sets an algorithm: both providers' default.
LB_ALGORITHM = "round_robin"


def rule_line(
    protocol: str, port: str | None, sources: Iterable[str], description: str = ""
) -> str:
    """One inbound rule as the diff compares it: `tcp 443 from 0.0.0.0/0, ::/0 (https)`."""
    text = f"{protocol} {port or 'any'} from {', '.join(sorted(sources))}"
    return f"{text} ({description})" if description else text


def rules_text(lines: Iterable[str]) -> str:
    """Rule lines in a fixed order, one per line."""
    return "\n".join(sorted(lines)) or "(none)"


def names_text(names: Iterable[str]) -> str:
    """Server (or tag) names, sorted, comma-separated."""
    return ", ".join(sorted(names)) or "(none)"


def service_line(protocol: str, listen: int, destination: int, passthrough: bool = False) -> str:
    """A load balancer's service: `tcp 443 -> 443`, with `(tls passthrough)` where it is."""
    text = f"{protocol} {listen} -> {destination}"
    return text + " (tls passthrough)" if passthrough else text


def key_name_of(fleet: str, fingerprint: str) -> str:
    """The name the fleet gives a key with `fingerprint` (as `ssh_key_name` does)."""
    return f"{fleet}-key-{fingerprint.replace(':', '')[:8]}"


def declared_resources(
    fleet: Fleet,
    servers: Sequence[Server],
    catalog: Catalog,
    *,
    engine_sources: tuple[str, ...],
    ssh_public_keys: tuple[str, ...],
) -> tuple[CloudResource, ...]:
    """The resources besides servers the fleet's program declares for `servers` (placed by
    engine.placement), with the engine's firewall open to `engine_sources` and the keys
    `ssh_public_keys` uploaded; none for the local provider."""
    if fleet.provider.name is ProviderName.HCLOUD:
        return _hcloud(fleet, servers, catalog, engine_sources, ssh_public_keys)
    if fleet.provider.name is ProviderName.DIGITALOCEAN:
        return _digitalocean(fleet, servers, engine_sources, ssh_public_keys)
    return ()


def _keys(fleet: Fleet, keys: tuple[str, ...]) -> list[CloudResource]:
    return [
        CloudResource(
            kind=ResourceKind.SSH_KEY,
            name=ssh_key_name(fleet.name, key),
            properties=(("fingerprint", ssh_fingerprint(key)),),
            fixed=("fingerprint",),
            logical=(ssh_key_name(fleet.name, key),),
        )
        for key in unique_keys(keys)
    ]


def _lb_locations(fleet: Fleet, groups: dict[str, tuple[Server, ...]]) -> dict[str, str]:
    return {lb.name: lb_location(lb, groups.get(lb.targets, ())) for lb in fleet.load_balancers}


def _balanced_networks(fleet: Fleet, lb: LoadBalancer) -> tuple[str, ...]:
    """The network a load balancer reaches its targets over: its group's first, if any."""
    return fleet.group(lb.targets).networks[:1]


# --- Hetzner Cloud ---------------------------------------------------------------------------


def _hcloud(
    fleet: Fleet,
    servers: Sequence[Server],
    catalog: Catalog,
    sources: tuple[str, ...],
    keys: tuple[str, ...],
) -> tuple[CloudResource, ...]:
    groups = servers_by_group(servers)
    lb_locations = _lb_locations(fleet, groups)
    zone_of = {name: location.network_zone for name, location in catalog.locations.items()}
    everyone = tuple(s.name for s in servers)
    found = [
        _hcloud_firewall(
            engine_resource_name(fleet.name, ENGINE_FIREWALL),
            f"firewall.{ENGINE_FIREWALL}",
            engine_rules(fleet, sources) if sources else None,
            everyone,
        )
    ]
    found += [
        _hcloud_firewall(
            fleet_resource_name(fleet.name, fw.name),
            f"firewall-{fw.name}",
            fw.inbound,
            tuple(s.name for s in servers if fw.name in s.firewalls),
        )
        for fw in fleet.firewalls
    ]
    for network in fleet.networks:
        members = [s for s in servers if network.name in s.networks]
        zones = {zone_of.get(s.location, "") for s in members}
        zones |= {
            zone_of.get(lb_locations[lb.name], "")
            for lb in fleet.load_balancers
            if _balanced_networks(fleet, lb) == (network.name,)
        }
        subnets = [
            f"{zone} {carve(network.ip_range, NETWORK_ZONES.index(zone), len(NETWORK_ZONES))}"
            for zone in sorted(zones & set(NETWORK_ZONES), key=NETWORK_ZONES.index)
        ]
        found.append(
            CloudResource(
                kind=ResourceKind.NETWORK,
                name=fleet_resource_name(fleet.name, network.name),
                properties=(
                    ("ip_range", network.ip_range),
                    ("subnets", "\n".join(sorted(subnets))),
                ),
                fixed=("ip_range",),
                servers=tuple(s.name for s in members),
                on_replace="detached and attached again: their private addresses change",
                # A balancer's attachment goes with the network it attaches to.
                logical=(
                    f"network-{network.name}",
                    f"subnet-{network.name}",
                    *(
                        f"lb-{lb.name}-network"
                        for lb in fleet.load_balancers
                        if _balanced_networks(fleet, lb) == (network.name,)
                    ),
                ),
            )
        )
    for lb in fleet.load_balancers:
        targets = groups.get(lb.targets, ())
        services = sorted(lb.services, key=lambda s: s.listen)
        found.append(
            CloudResource(
                kind=ResourceKind.LOAD_BALANCER,
                name=fleet_resource_name(fleet.name, lb.name),
                properties=(
                    ("type", lb.type or DEFAULT_LB_TYPE),
                    ("location", lb_locations[lb.name]),
                    ("algorithm", LB_ALGORITHM),
                    (
                        "services",
                        "\n".join(
                            service_line(HCLOUD_LB_PROTOCOLS[s.protocol], s.listen, s.destination)
                            for s in services
                        ),
                    ),
                    ("targets", names_text(s.name for s in targets)),
                    # Hetzner's default check of a service: its protocol, on its destination.
                    (
                        "health_checks",
                        "\n".join(
                            f"{HCLOUD_LB_PROTOCOLS[s.protocol]} {s.destination}" for s in services
                        ),
                    ),
                ),
                fixed=("location",),
                logical=(f"lb-{lb.name}", f"firewall.lb-{lb.name}"),
            )
        )
    for grouped in groups.values():
        placement = grouped[0].placement_group
        if placement:
            found.append(
                CloudResource(
                    kind=ResourceKind.PLACEMENT_GROUP,
                    name=placement,
                    properties=(("type", "spread"),),
                    fixed=("type",),
                    servers=tuple(s.name for s in grouped),
                    on_replace="powered off to move into the new group",
                    logical=(placement,),
                )
            )
    return (*found, *_keys(fleet, keys))


def _rules(rules: Sequence[FirewallRule] | None, *, described: bool) -> tuple[tuple[str, str], ...]:
    """A firewall's `rules` property; none when they are not known (None)."""
    if rules is None:
        return ()
    lines = (
        rule_line(str(r.protocol), r.port, r.sources, r.description if described else "")
        for r in rules
    )
    return (("rules", rules_text(lines)),)


def _hcloud_firewall(
    name: str, logical: str, rules: Sequence[FirewallRule] | None, servers: tuple[str, ...]
) -> CloudResource:
    return CloudResource(
        kind=ResourceKind.FIREWALL,
        name=name,
        properties=_rules(rules, described=True),
        servers=servers,
        logical=(logical,),
    )


# --- DigitalOcean ----------------------------------------------------------------------------


def _digitalocean(
    fleet: Fleet, servers: Sequence[Server], sources: tuple[str, ...], keys: tuple[str, ...]
) -> tuple[CloudResource, ...]:
    groups = servers_by_group(servers)
    lb_regions = _lb_locations(fleet, groups)
    found = [
        _do_firewall(
            engine_resource_name(fleet.name, ENGINE_FIREWALL),
            f"firewall.{ENGINE_FIREWALL}",
            engine_rules(fleet, sources) if sources else None,
            f"fleet:{fleet.name}",
            tuple(s.name for s in servers),
        )
    ]
    spec_firewalls = {fw.name: fw for fw in fleet.firewalls}
    for group in fleet.groups:
        for name in group.firewalls:
            found.append(
                _do_firewall(
                    qualified_name(fleet.name, name, group.name),
                    f"firewall-{name}.{group.name}",
                    spec_firewalls[name].inbound,
                    member_tag(fleet.name, group.name),
                    tuple(s.name for s in groups.get(group.name, ())),
                )
            )
    for network in fleet.networks:
        regions = {s.location for s in servers if network.name in s.networks}
        regions |= {
            lb_regions[lb.name]
            for lb in fleet.load_balancers
            if _balanced_networks(fleet, lb) == (network.name,)
        }
        for region in sorted(regions & set(REGIONS), key=REGIONS.index):
            ip_range = carve(
                network.ip_range, REGIONS.index(region), len(REGIONS), largest_prefix=16
            )
            found.append(
                CloudResource(
                    kind=ResourceKind.NETWORK,
                    name=qualified_name(fleet.name, network.name, region),
                    properties=(("ip_range", ip_range), ("region", region)),
                    fixed=("ip_range", "region"),
                    servers=tuple(
                        s.name
                        for s in servers
                        if network.name in s.networks and s.location == region
                    ),
                    on_replace="replaced: DigitalOcean cannot move a droplet to another VPC",
                    replaces_servers=True,
                    # A balancer in the VPC is made anew with it.
                    logical=(
                        f"vpc-{network.name}-{region}",
                        *(
                            f"lb-{lb.name}"
                            for lb in fleet.load_balancers
                            if _balanced_networks(fleet, lb) == (network.name,)
                            and lb_regions[lb.name] == region
                        ),
                    ),
                )
            )
    for lb in fleet.load_balancers:
        region = lb_regions[lb.name]
        targets = [s for s in groups.get(lb.targets, ()) if s.location == region]
        services = sorted(lb.services, key=lambda s: s.listen)
        found.append(
            CloudResource(
                kind=ResourceKind.LOAD_BALANCER,
                name=fleet_resource_name(fleet.name, lb.name),
                properties=(
                    ("type", lb.type or DEFAULT_LB_SIZE),
                    ("location", region),
                    ("algorithm", LB_ALGORITHM),
                    (
                        "services",
                        "\n".join(
                            service_line(
                                DO_LB_PROTOCOLS[s.protocol],
                                s.listen,
                                s.destination,
                                s.protocol is LbProtocol.HTTPS,
                            )
                            for s in services
                        ),
                    ),
                    ("targets", names_text(s.name for s in targets)),
                    ("health_checks", f"tcp {lb.services[0].destination}"),
                ),
                fixed=("location",),
                logical=(f"lb-{lb.name}", f"firewall.lb-{lb.name}"),
            )
        )
    for record in fleet.dns:
        for server in groups.get(record.targets, ()):
            name = record.name.replace("{server}", server.name)
            found.append(
                CloudResource(
                    kind=ResourceKind.DNS_RECORD,
                    name=f"{record.type} {name}.{record.zone}",
                    properties=(("ttl", str(record.ttl)), ("points_to", server.name)),
                    servers=(server.name,),
                    logical=(f"dns-{record.type}-{name}.{record.zone}",),
                )
            )
    return (*found, *_keys(fleet, keys))


def _do_firewall(
    name: str,
    logical: str,
    rules: Sequence[FirewallRule] | None,
    tag: str,
    servers: tuple[str, ...],
) -> CloudResource:
    # DigitalOcean firewall rules carry no description.
    return CloudResource(
        kind=ResourceKind.FIREWALL,
        name=name,
        properties=(*_rules(rules, described=False), ("tags", tag)),
        servers=servers,
        logical=(logical,),
    )
