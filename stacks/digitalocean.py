"""A fleet on DigitalOcean (pulumi_digitalocean).

    fleet-wide  SSH keys, the tags firewalls select by, the engine's firewall, the spec's
                firewalls (one per firewall and group), VPCs (one per network and region, as
                DigitalOcean requires), load balancers (+ a firewall letting them in), the
                project assignment
    per group   a ServerGroup component: the droplets and their DNS records

Droplet names are not unique on DigitalOcean, so ownership is in tags: each droplet carries its
labels as `key:value` tags (ownership ones included) plus `fleet-member:<fleet>:<group>`, the
tag its group's firewalls select (a firewall takes at most 10 droplets by id, tags scale).
The tags exist before the droplets and the firewalls before the droplets, so a droplet is never
reachable before its firewalls apply. DigitalOcean firewalls deny outbound traffic that no rule
allows: the engine's firewall, on every droplet, allows all of it (phone-home, packages).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pulumi

from engine.errors import EngineError
from engine.model import (
    LABEL_FLEET_ID,
    FirewallRule,
    Fleet,
    Image,
    ImageKind,
    LbProtocol,
    LoadBalancer,
    Server,
    fleet_resource_name,
)
from engine.providers.digitalocean.naming import member_tag
from engine.providers.naming import (
    ENGINE_FIREWALL,
    engine_resource_name,
    lb_firewall_name,
    qualified_name,
)
from stacks.common import (
    WORLD,
    carve,
    engine_rules,
    lb_location,
    servers_by_group,
    ssh_fingerprint,
    ssh_key_name,
    tags,
    unique_keys,
    with_fleet_id,
)
from stacks.declared import DEFAULT_LB_SIZE, REGIONS
from stacks.declared import DO_LB_PROTOCOLS as LB_PROTOCOLS
from stacks.group import ServerGroup
from stacks.inputs import StackInputs

with warnings.catch_warnings():
    # The SDK warns about its own deprecated enums on import; nothing we use.
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_digitalocean as do

ALL_OUTBOUND = [
    do.FirewallOutboundRuleArgs(
        protocol="tcp", port_range="1-65535", destination_addresses=[*WORLD]
    ),
    do.FirewallOutboundRuleArgs(
        protocol="udp", port_range="1-65535", destination_addresses=[*WORLD]
    ),
    do.FirewallOutboundRuleArgs(protocol="icmp", destination_addresses=[*WORLD]),
]


def provider(fleet: Fleet, token: str) -> do.Provider:
    """The fleet's DigitalOcean provider: its token (a secret) and API endpoint."""
    return do.Provider(
        "digitalocean", token=pulumi.Output.secret(token), api_endpoint=fleet.provider.endpoint
    )


def declare(inputs: StackInputs, provider: do.Provider) -> dict[str, dict[str, object]]:
    """Declare the fleet on DigitalOcean; returns the server outputs by name."""
    fleet = inputs.fleet
    top = pulumi.ResourceOptions(provider=provider)
    groups = servers_by_group(inputs.servers)
    for server in inputs.servers:
        _check(server)
    lb_regions = {
        lb.name: lb_location(lb, groups.get(lb.targets, ())) for lb in fleet.load_balancers
    }

    keys = _ssh_keys(inputs, provider)
    fleet_tag = do.Tag("tag.fleet", name=f"fleet:{fleet.name}", opts=top)
    marks = [fleet_tag]
    if inputs.fleet_id:
        marks.append(do.Tag("tag.fleet-id", name=f"{LABEL_FLEET_ID}:{inputs.fleet_id}", opts=top))
    members = {
        group.name: do.Tag(f"tag-{group.name}", name=member_tag(fleet.name, group.name), opts=top)
        for group in fleet.groups
    }
    firewalls: list[do.Firewall] = [
        do.Firewall(
            f"firewall.{ENGINE_FIREWALL}",
            name=engine_resource_name(fleet.name, ENGINE_FIREWALL),
            tags=[fleet_tag.name],
            inbound_rules=[_rule(r) for r in engine_rules(fleet, inputs.engine_sources)],
            outbound_rules=ALL_OUTBOUND,
            opts=top,
        )
    ]
    spec_firewalls = {fw.name: fw for fw in fleet.firewalls}
    for group in fleet.groups:
        for name in group.firewalls:
            inbound = spec_firewalls[name].inbound
            firewalls.append(
                do.Firewall(
                    f"firewall-{name}.{group.name}",
                    name=qualified_name(fleet.name, name, group.name),
                    tags=[members[group.name].name],
                    inbound_rules=[_rule(r) for r in inbound],
                    # DigitalOcean wants a rule in every firewall; a spec firewall that opens
                    # nothing still exists (the inventory shows the droplet behind it), with
                    # the outbound rules the engine's firewall already gives every droplet.
                    outbound_rules=None if inbound else ALL_OUTBOUND,
                    opts=top,
                )
            )
    vpcs = _vpcs(inputs, lb_regions, top)

    outputs: dict[str, dict[str, object]] = {}
    droplets: dict[str, do.Droplet] = {}
    for group in fleet.groups:
        component = ServerGroup(fleet.name, group.name, top)
        image = _image(group.image, provider)
        for server in groups.get(group.name, ()):
            droplet = do.Droplet(
                server.name,
                name=server.name,
                size=server.server_type,
                image=image,
                region=server.location,
                ssh_keys=keys,
                tags=[
                    *tags(with_fleet_id(server.labels, inputs.fleet_id)),
                    member_tag(fleet.name, group.name),
                ],
                # A secret: Pulumi keeps it encrypted in its state (it holds a one-time token).
                user_data=pulumi.Output.secret(inputs.user_data[server.name]),
                vpc_uuid=vpcs[server.networks[0], server.location].id if server.networks else None,
                backups=server.backups,
                ipv6=server.public_ipv6,
                public_networking=None if server.public_ipv4 else False,
                graceful_shutdown=True,
                opts=component.server(
                    provider,
                    depends_on=[*marks, members[group.name], *firewalls],
                    fresh=server.name in inputs.replaced,
                    adopt=inputs.adopted.get(server.name),
                ),
            )
            droplets[server.name] = droplet
            outputs[server.name] = {
                "id": droplet.id,
                "ipv4": droplet.ipv4_address,
                "ipv6": droplet.ipv6_address,
                "private_ipv4": droplet.ipv4_address_private,
                "location": server.location,
            }
            _dns_records(inputs, server, droplet, component, provider)

    balancers = [
        _load_balancer(inputs, lb, lb_regions[lb.name], groups, droplets, vpcs, members, top)
        for lb in fleet.load_balancers
    ]
    if fleet.provider.project:
        project = do.get_project_output(
            name=fleet.provider.project, opts=pulumi.InvokeOutputOptions(provider=provider)
        )
        do.ProjectResources(
            "project",
            project=project.id,
            resources=[d.droplet_urn for d in droplets.values()]
            + [b.load_balancer_urn for b in balancers],
            opts=top,
        )
    return outputs


def _check(server: Server) -> None:
    """What DigitalOcean cannot do, refused before anything is declared."""
    if len(server.networks) > 1:
        raise EngineError(
            f"{server.name} lists {len(server.networks)} networks; a droplet sits in one VPC"
        )
    if not server.public_ipv4 and server.public_ipv6:
        raise EngineError(
            f"{server.name} asks for IPv6 without IPv4; DigitalOcean has no IPv6-only droplets"
        )
    if not server.public_ipv4 and not server.networks:
        raise EngineError(
            f"{server.name} would have no public address and no VPC; give it a network"
        )


def _rule(rule: FirewallRule) -> do.FirewallInboundRuleArgs:
    return do.FirewallInboundRuleArgs(
        protocol=str(rule.protocol),
        port_range=rule.port,
        source_addresses=list(rule.sources),
    )


def _ssh_keys(inputs: StackInputs, provider: do.Provider) -> list[pulumi.Input[str]]:
    """Upload the fleet's keys; reuse a key the account already has under another name.

    DigitalOcean refuses a second key with the same fingerprint. DigitalOcean keys carry no
    labels, so the name tells ours (`<fleet>-key-<fingerprint>`) from the account's own.
    """
    fleet = inputs.fleet.name
    listed = do.get_ssh_keys(opts=pulumi.InvokeOptions(provider=provider)).ssh_keys
    refs: list[pulumi.Input[str]] = []
    for public_key in unique_keys(inputs.ssh_public_keys):
        name = ssh_key_name(fleet, public_key)
        fingerprint = ssh_fingerprint(public_key)
        if any(k.fingerprint == fingerprint and k.name != name for k in listed):
            refs.append(fingerprint)
            continue
        key = do.SshKey(
            name, name=name, public_key=public_key, opts=pulumi.ResourceOptions(provider=provider)
        )
        refs.append(key.fingerprint)
    return refs


def _region_slot(region: str) -> int:
    if region not in REGIONS:
        raise EngineError(f"the region {region} is new to the engine; VPCs cannot be planned there")
    return REGIONS.index(region)


def _vpcs(
    inputs: StackInputs, lb_regions: dict[str, str], opts: pulumi.ResourceOptions
) -> dict[tuple[str, str], do.Vpc]:
    """A VPC per network and region where its droplets (or a load balancer in front of them)
    are, each at its region's fixed part of the network's range."""
    fleet = inputs.fleet
    vpcs: dict[tuple[str, str], do.Vpc] = {}
    for network in fleet.networks:
        regions = {s.location for s in inputs.servers if network.name in s.networks}
        regions |= {
            lb_regions[lb.name]
            for lb in fleet.load_balancers
            if fleet.group(lb.targets).networks[:1] == (network.name,)
        }
        for region in sorted(regions, key=_region_slot):
            vpcs[network.name, region] = do.Vpc(
                f"vpc-{network.name}-{region}",
                name=qualified_name(fleet.name, network.name, region),
                region=region,
                ip_range=carve(
                    network.ip_range, _region_slot(region), len(REGIONS), largest_prefix=16
                ),
                description=f"fleet-engine: network {network.name} of fleet {fleet.name}",
                opts=opts,
            )
    return vpcs


def _image(image: Image, provider: do.Provider) -> pulumi.Input[str]:
    """An image slug, the newest private image with the labels as tags, or a custom image."""
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    if image.kind is ImageKind.NAME:
        return image.name
    if image.kind is ImageKind.CUSTOM:
        return do.get_image_output(name=image.name, opts=invoke).id.apply(str)
    wanted = tags(image.labels)
    found = do.get_images_output(
        filters=[
            do.GetImagesFilterArgs(key="private", values=["true"]),
            do.GetImagesFilterArgs(key="tags", values=wanted, all=True),
        ],
        sorts=[do.GetImagesSortArgs(key="created", direction="desc")],
        opts=invoke,
    )

    def newest(images: Sequence[do.outputs.GetImagesImageResult]) -> str:
        if not images:
            raise EngineError(
                f"no private image carries the tags {', '.join(wanted)}; tag your golden "
                "snapshot with them or change the group's image"
            )
        return str(images[0].id)

    return found.images.apply(newest)


def _dns_records(
    inputs: StackInputs,
    server: Server,
    droplet: do.Droplet,
    component: ServerGroup,
    provider: do.Provider,
) -> None:
    for record in inputs.fleet.dns:
        if record.targets != server.group:
            continue
        if record.type == "AAAA" and not server.public_ipv6:
            raise EngineError(f"an AAAA record for {server.name} needs public_ipv6: true")
        name = record.name.replace("{server}", server.name)
        do.DnsRecord(
            f"dns-{record.type}-{name}.{record.zone}",
            domain=record.zone,
            type=record.type,
            name=name,
            value=droplet.ipv4_address if record.type == "A" else droplet.ipv6_address,
            ttl=record.ttl,
            opts=component.child(provider),
        )


def _load_balancer(
    inputs: StackInputs,
    lb: LoadBalancer,
    region: str,
    groups: dict[str, tuple[Server, ...]],
    droplets: dict[str, do.Droplet],
    vpcs: dict[tuple[str, str], do.Vpc],
    members: dict[str, do.Tag],
    opts: pulumi.ResourceOptions,
) -> do.LoadBalancer:
    """A regional load balancer for the target group's droplets in its region, and the
    firewall that lets it reach their destination ports."""
    fleet = inputs.fleet
    targets = [s for s in groups.get(lb.targets, ()) if s.location == region]
    if not targets:
        raise EngineError(
            f"load balancer {lb.name} runs in {region}, where group {lb.targets} has no "
            "droplet; DigitalOcean balances within one region"
        )
    network = fleet.group(lb.targets).networks[:1]
    balancer = do.LoadBalancer(
        f"lb-{lb.name}",
        name=fleet_resource_name(fleet.name, lb.name),
        region=region,
        size=lb.type or DEFAULT_LB_SIZE,
        droplet_ids=[droplets[s.name].id.apply(int) for s in targets],
        vpc_uuid=vpcs[network[0], region].id if network else None,
        forwarding_rules=[
            do.LoadBalancerForwardingRuleArgs(
                entry_port=service.listen,
                entry_protocol=LB_PROTOCOLS[service.protocol],
                target_port=service.destination,
                target_protocol=LB_PROTOCOLS[service.protocol],
                tls_passthrough=True if service.protocol is LbProtocol.HTTPS else None,
            )
            for service in lb.services
        ],
        healthcheck=do.LoadBalancerHealthcheckArgs(protocol="tcp", port=lb.services[0].destination),
        opts=opts,
    )
    do.Firewall(
        f"firewall.lb-{lb.name}",
        name=lb_firewall_name(fleet.name, lb.name),
        tags=[members[lb.targets].name],
        inbound_rules=[
            do.FirewallInboundRuleArgs(
                protocol="tcp", port_range=str(port), source_load_balancer_uids=[balancer.id]
            )
            for port in sorted({service.destination for service in lb.services})
        ],
        opts=opts,
    )
    return balancer
